from setuptools import find_packages, setup

setup(
    name="ofa-ds",
    version="0.1.0",
    description="DeepSpeed-based pretraining and finetuning for OFA (arXiv 2202.03052)",
    packages=find_packages(include=["ofa_ds", "ofa_ds.*", "preprocessing", "preprocessing.*"]),
    package_data={"ofa_ds": ["../ds_configs/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        # Exact pins: these two install from local files on the project machines.
        "torch==2.14.1",
        "torchvision==0.29.1",
        "deepspeed>=0.19,<0.20",
        "numpy",
        "pillow",
        "safetensors",
        "tokenizers>=0.19",
        "tensorboard",
        "tqdm",
        # Caption (COCO toolkit) and Gigaword (ROUGE) evaluation.
        "pycocoevalcap",
        "rouge-score",
    ],
    # transformers: the small random CLIP of the CLIP-SCST test (users load their CLIP with it too).
    extras_require={"test": ["pytest", "pytest-timeout", "transformers", "pytorch-fid"]},
    entry_points={"console_scripts": ["ofa-ds=ofa_ds.cli:main"]},
)

"""An ImageNet-style class folder (``ROOT/<class>/<image>``) → ``imagenet`` rows + class map.

Classes are the sub-folders in sorted order (for ImageNet: sorted WordNet ids, the Caffe order
OFA's 1-based labels follow). Class names come from ``class_names`` when given -- a text file of
``<folder> <name>[, <other names>]`` lines (ImageNet's ``LOC_synset_mapping.txt``; the first
name is used) or a JSON ``{folder: name}`` -- else from the folder name (``_`` → space).
Writes ``class2label_new.pkl`` / ``.json`` (``{name: 0-based label}``, OFA's candidate file).
"""
from __future__ import annotations

import json
from pathlib import Path

from preprocessing.sources.common import ImageConverter

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def read_class_names(path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    if path.suffix == ".json":
        return {str(k): str(v) for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            folder, _, rest = line.strip().partition(" ")
            names[folder] = rest.split(",")[0].strip() or folder
    return names


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageNetFolder(ImageConverter):
    kind, format = "imagenet", "imagenet"

    def __init__(self, root, *, class_names=None, **kw):
        super().__init__(None, **kw)
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"{self.root} is not a folder")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise ValueError(f"{self.root} has no class sub-folders")
        names = read_class_names(class_names) if class_names else {}
        self.names = {c: names.get(c, c.replace("_", " ")) for c in self.classes}
        self.class_names_source = str(class_names) if class_names else None
        self._count = None

    def settings(self):
        return {"root": str(self.root), "class_names": self.class_names_source}

    def total(self):
        if self._count is None:
            self._count = sum(len(list_images(self.root / c)) for c in self.classes)
        return self._count

    def records(self):
        for label, cls in enumerate(self.classes, start=1):
            for path in list_images(self.root / cls):
                yield path, label, self.names[cls]

    def rows(self, record):
        path, label, name = record
        yield [self.load_image(path).b64, str(label), name]

    def finish(self, out_dir, name):
        from preprocessing.sources.common import write_pickle_and_json
        mapping = {}
        for i, cls in enumerate(self.classes):
            mapping.setdefault(self.names[cls], i)  # a repeated name (ImageNet has two "crane"s) keeps its first
        return write_pickle_and_json(Path(out_dir), "class2label_new", mapping)

"""ofa-ds: OFA (arXiv 2202.03052) on DeepSpeed."""
from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so that `import ofa_ds` stays cheap and data workers do not import the model.
    if name == "OFAModel":
        from ofa_ds.model.ofa import OFAModel
        return OFAModel
    if name == "OFAConfig":
        from ofa_ds.model.config import OFAConfig
        return OFAConfig
    if name == "Vocabulary":
        from ofa_ds.data.vocab import Vocabulary
        return Vocabulary
    raise AttributeError(f"module 'ofa_ds' has no attribute {name!r}")


__all__ = ["OFAModel", "OFAConfig", "Vocabulary"]

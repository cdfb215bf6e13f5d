"""VQ-GAN image tokenizer (taming-transformers architecture, published key names). See model.py."""
from ofa_ds.vqgan.model import FLAVORS, VQGAN, VQGANConfig, load_state_dict

__all__ = ["FLAVORS", "VQGAN", "VQGANConfig", "load_state_dict"]

"""Sequence generation for OFA: beam search, sampling, constraints (spec §7)."""
from ofa_ds.generation.generator import GenerationConfig, Hypothesis, SequenceGenerator, generate
from ofa_ds.generation.presets import TASK_GENERATION, task_generation_config
from ofa_ds.generation.search import BeamSearch, Candidates, Sampling
from ofa_ds.generation.trie import Trie

__all__ = ["BeamSearch", "Candidates", "GenerationConfig", "Hypothesis", "Sampling",
           "SequenceGenerator", "TASK_GENERATION", "Trie", "generate", "task_generation_config"]

"""Sparse dictionaries: SAEs (ReLU, TopK, BatchTopK, JumpReLU, Matryoshka) and transcoders,
training, SAELens-format save/load, splicing into a model, evaluation, and synthetic ground truth."""

from mechscope.sae.config import ARCHITECTURES, SAEConfig
from mechscope.sae.evaluate import (
    SAEEvaluation,
    evaluate_sae,
    fraction_of_variance_unexplained,
    typical_tokens,
)
from mechscope.sae.io import load_sae, save_sae
from mechscope.sae.model import SAE
from mechscope.sae.splice import splice_hooks
from mechscope.sae.synthetic import SparseDictionaryData, mcc, mean_max_cosine
from mechscope.sae.train import TrainConfig, train

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "SAEConfig",
    "SAEEvaluation",
    "SparseDictionaryData",
    "TrainConfig",
    "evaluate_sae",
    "fraction_of_variance_unexplained",
    "load_sae",
    "mcc",
    "mean_max_cosine",
    "save_sae",
    "splice_hooks",
    "train",
    "typical_tokens",
]

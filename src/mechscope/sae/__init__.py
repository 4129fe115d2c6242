"""Sparse dictionaries: SAEs (ReLU, TopK, BatchTopK, JumpReLU, Matryoshka) and transcoders,
training, SAELens-format save/load, and synthetic ground truth."""

from mechscope.sae.config import ARCHITECTURES, SAEConfig
from mechscope.sae.io import load_sae, save_sae
from mechscope.sae.model import SAE
from mechscope.sae.synthetic import SparseDictionaryData, mcc, mean_max_cosine
from mechscope.sae.train import TrainConfig, train

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "SAEConfig",
    "SparseDictionaryData",
    "TrainConfig",
    "load_sae",
    "mcc",
    "mean_max_cosine",
    "save_sae",
    "train",
]

"""Toy models with known answers (Toy Models of Superposition)."""

from mechscope.toys.superposition import ToyConfig, ToyResult, train_toy_models

__all__ = ["ToyConfig", "ToyResult", "train_toy_models"]

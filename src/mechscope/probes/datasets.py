"""Binary probing datasets from :mod:`mechscope.datasets`: texts, 0/1 labels and control keys."""

from __future__ import annotations

import string
from dataclasses import dataclass

import torch

from mechscope import datasets
from mechscope.errors import MechscopeError

PROBE_DATASETS = {
    "sentiment": "positive (1) / negative (0) review sentences; each pair differs only in the adjective",
    "facts": "true (1) / false (0) statements: capitals, number comparisons, sums",
    "harmful-harmless": "harmful (1) / harmless (0) instructions",
}


@dataclass(frozen=True)
class ProbeDataset:
    """texts [n], labels [n] (long, 0/1) and keys [n]: each text's last word, lower-cased and
    stripped of punctuation ("The movie was superb." -> "superb"). The last word is the one
    the end-of-text position reads most directly, and it names the varying slot of the
    templates (adjective, city or number, request object), so control labels drawn per key
    ask whether a probe could do as well by memorising words."""

    name: str
    split: str
    texts: list[str]
    labels: torch.Tensor
    keys: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int) -> ProbeDataset:
        """At most ``n`` examples, keeping the class proportions (and at least 2 per class): the
        first ones of each class, in their original order."""
        if n < 4:
            raise MechscopeError(f"a probe dataset needs at least 4 examples (2 per class), asked for {n}")
        if n >= len(self):
            return self
        share = int(round(n * float(self.labels.float().mean())))
        quota = {1: min(max(share, 2), n - 2), 0: n - min(max(share, 2), n - 2)}
        kept, seen = [], {0: 0, 1: 0}
        for index, label in enumerate(self.labels.tolist()):
            if seen[label] < quota[label]:
                kept.append(index)
                seen[label] += 1
        return ProbeDataset(self.name, self.split, [self.texts[i] for i in kept], self.labels[kept],
                            [self.keys[i] for i in kept])


def last_word(text: str) -> str:
    words = text.split()
    return words[-1].strip(string.punctuation).lower() if words else ""


def probe_dataset(name: str, split: str = "train") -> ProbeDataset:
    """The ``split`` ("train" / "test") of probing dataset ``name`` (see ``PROBE_DATASETS``).
    Sentiment pairs become two texts each (positive then negative, so the classes alternate);
    harmful and harmless instructions are interleaved for the same reason."""
    if name not in PROBE_DATASETS:
        raise MechscopeError(f"unknown probe dataset {name!r}; choose one of: {', '.join(PROBE_DATASETS)}")
    if name == "sentiment":
        pairs = datasets.load("sentiment", split)
        texts = [text for pair in pairs for text in (pair["positive"], pair["negative"])]
        labels = [label for _ in pairs for label in (1, 0)]
    elif name == "facts":
        items = datasets.load("facts", split)
        texts, labels = [item["text"] for item in items], [int(item["label"]) for item in items]
    else:
        harmful, harmless = datasets.load("harmful", split), datasets.load("harmless", split)
        texts, labels = [], []
        for index in range(max(len(harmful), len(harmless))):
            for group, label in ((harmful, 1), (harmless, 0)):
                if index < len(group):
                    texts.append(group[index])
                    labels.append(label)
    return ProbeDataset(name, split, texts, torch.tensor(labels, dtype=torch.long), [last_word(t) for t in texts])

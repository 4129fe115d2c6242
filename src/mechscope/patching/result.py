"""PatchingResult: a score per patched site, with axis labels, ranking, plots and JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mechscope.errors import FileFormatError
from mechscope.files import atomic_text, read_json, required_keys


@dataclass
class PatchingResult:
    """Scores of a sweep. ``scores`` has one axis per entry of ``axes`` (e.g. layer x position);
    ``labels[axis]`` names each index. With ``normalised`` scores, 0 is the corrupted run's
    metric and 1 the clean run's; ``raw`` holds the metric itself."""

    kind: str
    mode: str
    metric: str
    axes: tuple[str, ...]
    labels: dict[str, list[str]]
    scores: torch.Tensor
    raw: torch.Tensor
    clean_value: float
    corrupted_value: float
    normalised: bool = True
    info: dict = field(default_factory=dict)

    def top(self, k: int = 10, by_abs: bool = True) -> list[tuple[tuple[str, ...], float]]:
        """The k sites with the largest (absolute) score: (labels along each axis, score)."""
        flat = self.scores.flatten()
        order = (flat.abs() if by_abs else flat).argsort(descending=True)[:k]
        result = []
        for index in order.tolist():
            coords = torch.unravel_index(torch.tensor(index), self.scores.shape)
            result.append((tuple(self.labels[a][int(c)] for a, c in zip(self.axes, coords)), float(flat[index])))
        return result

    def plot(self, title: str | None = None):
        """A plotly heatmap (3-axis results show layer.head rows against positions)."""
        import plotly.graph_objects as go

        scores, axes = self.scores, self.axes
        y_labels = self.labels[axes[0]]
        if len(axes) == 3:
            scores = scores.flatten(0, 1)
            y_labels = [f"L{a}H{b}" for a in self.labels[axes[0]] for b in self.labels[axes[1]]]
            x_labels, x_title = self.labels[axes[2]], axes[2]
        elif len(axes) == 2:
            x_labels, x_title = self.labels[axes[1]], axes[1]
        else:
            scores, x_labels, x_title = scores.unsqueeze(1), ["score"], ""
        figure = go.Figure(go.Heatmap(z=scores.numpy(), x=x_labels, y=y_labels, colorscale="RdBu", zmid=0,
                                      colorbar_title="normalised" if self.normalised else self.metric))
        figure.update_layout(
            title=title or f"{self.mode} patching of {self.kind} ({self.metric}; clean {self.clean_value:.3f}, "
                           f"corrupted {self.corrupted_value:.3f})",
            xaxis_title=x_title, yaxis_title=axes[0] if len(axes) < 3 else "layer.head",
            yaxis_autorange="reversed")
        return figure

    def to_json(self) -> dict:
        return {"kind": self.kind, "mode": self.mode, "metric": self.metric, "axes": list(self.axes),
                "labels": self.labels, "scores": self.scores.tolist(), "raw": self.raw.tolist(),
                "clean_value": self.clean_value, "corrupted_value": self.corrupted_value,
                "normalised": self.normalised, "info": self.info}

    def save(self, path: str | Path) -> Path:
        return atomic_text(path, json.dumps(self.to_json()))  # a crash never leaves a half-written result

    @classmethod
    def load(cls, path: str | Path) -> PatchingResult:
        keys = ("kind", "mode", "metric", "axes", "labels", "scores", "raw", "clean_value", "corrupted_value",
                "normalised")
        data = required_keys(read_json(path, "patching result"), keys, path, "patching result")
        try:
            scores, raw = torch.tensor(data["scores"], dtype=torch.float32), torch.tensor(data["raw"], dtype=torch.float32)
        except (TypeError, ValueError) as error:
            raise FileFormatError(f"{path}: scores / raw are not numeric arrays ({error})") from error
        shape = tuple(len(data["labels"].get(axis, [])) for axis in data["axes"]) if isinstance(data["labels"], dict) else ()
        if scores.shape != raw.shape or (shape and tuple(scores.shape) != shape):
            raise FileFormatError(f"{path}: scores {tuple(scores.shape)}, raw {tuple(raw.shape)} and the axes' labels "
                                  f"{shape} disagree")
        return cls(data["kind"], data["mode"], data["metric"], tuple(data["axes"]), data["labels"],
                   scores, raw, data["clean_value"],
                   data["corrupted_value"], data["normalised"], data.get("info", {}))

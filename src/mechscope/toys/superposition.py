"""Toy Models of Superposition (Elhage et al. 2022), reproduced: n sparse features squeezed
through m < n hidden dimensions, x_hat = ReLU(W^T W x + b), loss weighted by an importance that
decays geometrically over features. As features get sparser the model stores more of them than
it has dimensions, in superposition.

Many instances (one per sparsity) train in parallel as one batched model. Shapes: W [instances,
m, n], b [instances, n]; features x [batch, instances, n] are uniform on [0, 1] where present,
each present with probability 1 - sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mechscope.errors import ConfigError
from mechscope.validate import check_int, check_number


@dataclass(frozen=True)
class ToyConfig:
    n_features: int = 20
    n_hidden: int = 5
    sparsities: tuple[float, ...] = (0.0, 0.7, 0.9, 0.97, 0.99, 0.997)
    importance_decay: float = 0.9
    steps: int = 3000
    batch_size: int = 1024
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("n_features", self.n_features, minimum=1)
        check_int("n_hidden", self.n_hidden, minimum=1)
        if not self.sparsities:
            raise ConfigError("sparsities is empty; give at least one sparsity in [0, 1)")
        for sparsity in self.sparsities:
            check_number("sparsity", sparsity, minimum=0, maximum=0.9999)
        check_number("importance_decay", self.importance_decay, minimum=0, maximum=1, strict_minimum=True)
        check_int("steps", self.steps, minimum=1)
        check_int("batch_size", self.batch_size, minimum=1)
        check_number("lr", self.lr, minimum=0, strict_minimum=True)


@dataclass
class ToyResult:
    """Trained weights and the measures of superposition, per instance (sparsity)."""

    config: ToyConfig
    W: torch.Tensor  # [instances, n_hidden, n_features]
    b: torch.Tensor  # [instances, n_features]
    loss: list[float]

    def feature_norms(self) -> torch.Tensor:
        """[instances, n_features] ||W_i||: ~1 = feature represented, ~0 = dropped."""
        return self.W.norm(dim=1)

    def represented(self, threshold: float = 0.5) -> list[int]:
        """Number of features with norm above ``threshold``, per instance."""
        return (self.feature_norms() > threshold).sum(-1).tolist()

    def dimensions_per_feature(self) -> list[float]:
        """m / ||W||_F^2 per instance: 1 when each represented feature has its own dimension,
        below 1 in superposition (e.g. 0.5 for antipodal pairs, 0.4 for pentagons)."""
        return (self.config.n_hidden / self.W.pow(2).sum((1, 2))).tolist()

    def feature_dimensionality(self) -> torch.Tensor:
        """[instances, n_features] D_i = ||W_i||^4 / sum_j (W_i . W_j)^2: the fraction of a
        dimension feature i gets (1 = its own, 1/2 = shared with an antipodal partner, ...)."""
        gram = torch.einsum("imf,img->ifg", self.W, self.W)
        return self.feature_norms().pow(4) / gram.pow(2).sum(-1).clamp_min(1e-12)

    def plot(self):
        """Plotly figure: dimensions per feature against 1 / (1 - sparsity), and feature norms."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        density = [1 / max(1 - s, 1e-9) for s in self.config.sparsities]
        figure = make_subplots(rows=1, cols=2, subplot_titles=(
            "dimensions per feature", "feature norms ||W_i|| (rows: sparsity)"))
        figure.add_trace(go.Scatter(x=density, y=self.dimensions_per_feature(), mode="lines+markers",
                                    name="m / ||W||_F^2"), row=1, col=1)
        for level in (1.0, 0.5, 0.4, 1 / 3):
            figure.add_hline(y=level, line_dash="dot", row=1, col=1)
        figure.add_trace(go.Heatmap(z=self.feature_norms().tolist(), x=list(range(self.config.n_features)),
                                    y=[f"S={s}" for s in self.config.sparsities], colorscale="Viridis"),
                         row=1, col=2)
        figure.update_xaxes(type="log", title_text="1 / (1 - sparsity)", row=1, col=1)
        figure.update_xaxes(title_text="feature (importance decreasing)", row=1, col=2)
        return figure


def train_toy_models(config: ToyConfig = ToyConfig(), progress: bool = True) -> ToyResult:
    """Train one toy model per sparsity in ``config`` (deterministic given its seed)."""
    generator = torch.Generator().manual_seed(config.seed)
    instances = len(config.sparsities)
    W = torch.nn.Parameter(torch.randn(instances, config.n_hidden, config.n_features, generator=generator)
                           * (2 / (config.n_hidden + config.n_features)) ** 0.5)
    b = torch.nn.Parameter(torch.zeros(instances, config.n_features))
    importance = config.importance_decay ** torch.arange(config.n_features, dtype=torch.float32)
    present = 1 - torch.tensor(config.sparsities)[None, :, None]
    optimiser = torch.optim.AdamW([W, b], lr=config.lr, weight_decay=0.0)
    losses = []
    for _ in tqdm(range(config.steps), desc="toy models", disable=not progress):
        shape = (config.batch_size, instances, config.n_features)
        x = torch.rand(shape, generator=generator) * (torch.rand(shape, generator=generator) < present)
        hidden = torch.einsum("imf,bif->bim", W, x)
        out = torch.relu(torch.einsum("imf,bim->bif", W, hidden) + b)
        loss = (importance * (x - out) ** 2).mean(0).sum(-1)  # per instance
        optimiser.zero_grad()
        loss.sum().backward()
        optimiser.step()
        losses = loss.detach().tolist()
    return ToyResult(config, W.detach().clone(), b.detach().clone(), losses)

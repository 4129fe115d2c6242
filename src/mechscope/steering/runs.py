"""The runs behind ``mechscope steer`` (steered vs unsteered generations) and the checks that
``mechscope refusal`` makes before its model loads (see :func:`refusal_report.run_refusal`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mechscope import checks
from mechscope.errors import ConfigError
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.apply import PHASES, DirectionalAblation, Steering, checked_layers, generate
from mechscope.steering.direction import Direction
from mechscope.steering.refusal import RefusalConfig
from mechscope.validate import check_choice, check_int, check_number

Contrast = Literal["sentiment", "refusal", "caa-refusal", "caa-sycophancy"]
CONTRASTS = {
    # name: (how the direction is read, what it points towards)
    "sentiment": "positive minus negative sentences (last token)",
    "refusal": "harmful minus harmless instructions (last chat-template token)",
    "caa-refusal": "CAA: refusing minus complying A/B answers",
    "caa-sycophancy": "CAA: sycophantic minus honest A/B answers",
}
REFUSAL_OUTPUTS = ("direction.safetensors", "direction.json", "report.json", "generations.json", "refusal.html")


@dataclass(frozen=True)
class SteerOptions:
    """``mechscope steer``'s options; checked on creation, before any model loads. ``alpha`` is
    the strength as typed: absolute ("8") or times the direction's scale ("1.5x")."""

    prompt: str
    direction: Path | None = None
    contrast: str | None = None
    layer: int | None = None
    alpha: str = "1x"
    positions: str = "all"
    ablate: bool = False
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        if (self.direction is None) == (self.contrast is None):
            raise ConfigError("give exactly one of --direction FILE or --contrast NAME")
        if self.contrast is not None:
            check_choice("contrast", self.contrast, CONTRASTS)
            if self.layer is None:
                raise ConfigError("--contrast needs --layer (where to read and add the direction)")
        if self.layer is not None:
            check_int("layer", self.layer, 0, None)
        checks.check_text("prompt", self.prompt)
        checks.parse_strength(self.alpha)
        check_choice("positions", self.positions, PHASES)
        check_int("max_new_tokens", self.max_new_tokens, 1, checks.MAX_NEW_TOKENS)

    def strength(self, direction: Direction) -> float:
        value, relative = checks.parse_strength(self.alpha)
        return check_number("alpha", value * direction.scale if relative else value)


def contrast_direction(model: HookedModel, name: str, layer: int) -> Direction:
    """The direction of a bundled contrast (see ``CONTRASTS``) read at ``layer``."""
    from mechscope import datasets
    from mechscope.steering.builders import caa_direction, contrast_directions

    check_choice("contrast", name, CONTRASTS)
    checked_layers(model, layer)
    if name == "sentiment":
        pairs = datasets.load("sentiment")
        return contrast_directions(model, [p["positive"] for p in pairs], [p["negative"] for p in pairs],
                                   layer, -1, chat=False)[(layer, -1)]
    if name == "refusal":
        return contrast_directions(model, datasets.load("harmful")[:64], datasets.load("harmless")[:64],
                                   layer, -1, chat=True)[(layer, -1)]
    return caa_direction(model, datasets.load(name), layer, chat=True)[layer]


@dataclass
class SteerRun:
    direction: Direction
    label: str
    plain: str
    steered: str


def run_steer(model: HookedModel, options: SteerOptions, direction: Direction | None = None,
              progress: bool = False) -> SteerRun:
    """Generate from the prompt without and with the steering (or the ablation). ``direction``
    defaults to ``options.direction``'s file, or the contrast's direction at ``options.layer``."""
    if direction is None:
        direction = (Direction.load(options.direction) if options.direction is not None
                     else contrast_direction(model, options.contrast, options.layer))
    if options.ablate:
        intervention, label = DirectionalAblation(direction), "direction ablated"
    else:
        strength = options.strength(direction)
        intervention = Steering(direction, strength, layers=options.layer, positions=options.positions)
        layer = options.layer if options.layer is not None else direction.layer
        label = f"steered: alpha {strength:.3g} at layer {layer}"
    if direction.d_model != model.cfg.d_model:  # before generating, not inside the first steered forward
        raise ConfigError(f"the direction has d_model {direction.d_model}, the model {model.cfg.d_model}: it was "
                          "read from another model")
    if options.layer is not None:
        checked_layers(model, options.layer)
    tokens, _ = model.tokenize_prompts([options.prompt])
    checks.check_context(model, tokens.shape[1] + options.max_new_tokens, "the prompt plus --max-new-tokens")
    plain = generate(model, options.prompt, None, max_new_tokens=options.max_new_tokens, progress=progress)[0]
    steered = generate(model, options.prompt, intervention, max_new_tokens=options.max_new_tokens,
                       progress=progress)[0]
    return SteerRun(direction, label, plain, steered)


def check_refusal_config(config: RefusalConfig) -> RefusalConfig:
    """Refuse sizes the bundled datasets cannot provide, before the model loads (the search
    would otherwise fail, or run on fewer prompts, much later). The config's own fields are
    checked when it is built (RefusalConfig.__post_init__)."""
    from mechscope import datasets

    train = min(len(datasets.load("harmful")), len(datasets.load("harmless")))
    test = min(len(datasets.load("harmful", "test")), len(datasets.load("harmless", "test")))
    if config.n_train + config.n_val > train:
        raise ConfigError(f"n_train + n_val = {config.n_train + config.n_val} prompts each, but the harmful / harmless "
                          f"train splits hold {train}: ask for fewer")
    if config.n_test is not None:
        check_int("n_test", config.n_test, 1, test)
    check_int("max_new_tokens", config.max_new_tokens, 1, checks.MAX_NEW_TOKENS)
    return config


def check_refusal_fits(model: HookedModel, config: RefusalConfig) -> None:
    """After the load, before the search: the longest prompt used, in the chat template, plus
    the generated tokens must fit the model's context (and the template must exist)."""
    from mechscope import datasets

    prompts = [text for name in ("harmful", "harmless") for split in ("train", "test")
               for text in datasets.load(name, split)]
    longest = max(prompts, key=len)
    tokens, _ = model.tokenize_prompts([longest], chat=True)
    checks.check_context(model, tokens.shape[1] + config.max_new_tokens, "the longest prompt plus --max-new-tokens")


def refusal_outputs(save_model: bool) -> list[str]:
    return list(REFUSAL_OUTPUTS) + (["model"] if save_model else [])

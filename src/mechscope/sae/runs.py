"""The runs behind ``mechscope sae train | eval | dashboard`` on the default corpus (standard
library docstrings): options checked before any model loads, dictionaries read with clear
errors, a resumable training folder, and every file written atomically."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mechscope import checks
from mechscope.data.contexts import default_contexts
from mechscope.distributed import Ranks, check_ranks, output_folder_on_ranks
from mechscope.errors import ConfigError, FileFormatError, MechscopeError, MissingFileError, OutOfRangeError
from mechscope.files import READ_ERRORS, OutputFolder, atomic_text, prepare_output_folder, staged_writes
from mechscope.models.catalogue import check_hook_syntax
from mechscope.models.hooked_model import HookedModel
from mechscope.sae.config import ARCHITECTURES, TOPK_ARCHITECTURES, SAEConfig
from mechscope.sae.evaluate import SAEEvaluation, evaluate_sae
from mechscope.sae.io import load_sae, save_sae
from mechscope.sae.model import SAE
from mechscope.validate import check_choice, check_int, check_number

CONTEXT = 128  # tokens per corpus context
EVAL_CONTEXTS = 16  # held-out contexts scored after training
TRAIN_OUTPUTS = ("store", "checkpoints", "sae", "eval.json")
RESUMABLE = ("store", "checkpoints")  # an interrupted harvest or training continues from these


def load_dictionary(folder: str | Path) -> SAE:
    """:func:`~mechscope.sae.load_sae`, with a missing folder or an unreadable file reported as
    one :class:`FileFormatError` naming the path (not a safetensors or JSON traceback)."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise MissingFileError(f"dictionary folder {folder} does not exist (it should hold cfg.json and "
                               "sae_weights.safetensors)")
    if not folder.is_dir():
        raise FileFormatError(f"{folder} is a file, not a dictionary folder (cfg.json + sae_weights.safetensors)")
    try:
        return load_sae(folder)
    except MechscopeError:
        raise
    except READ_ERRORS as error:
        raise FileFormatError(f"could not read the dictionary in {folder} ({type(error).__name__}: {error}); "
                              "its cfg.json or sae_weights.safetensors is corrupt or incomplete") from error


def check_fits(model: HookedModel, sae: SAE, hook: str | None = None) -> str:
    """The hook ``sae`` reads; refuses a model without that hook or with another width there
    (a dictionary trained on another model), before any activation is computed."""
    hook = hook or sae.cfg.hook_name
    if not hook:
        raise ConfigError("the dictionary's cfg.json names no hook point (hook_name)")
    width = model.hook_point(hook).shape[-1]
    if width is not None and width != sae.cfg.d_in:
        raise ConfigError(f"the dictionary reads {sae.cfg.d_in}-wide activations but {hook} of "
                          f"{model.cfg.name or model.cfg.family} is {width} wide: was it trained on another model?")
    return hook


@dataclass(frozen=True)
class TrainOptions:
    """``mechscope sae train``'s options; checked on creation, before any model loads."""

    hook: str
    arch: str = "topk"
    k: int = 32
    d_sae: int = 4608
    tokens: int = 2_000_000
    batch_size: int = 4096
    lr: float = 1e-3
    harvest_contexts: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        check_hook_syntax(self.hook)
        check_choice("arch", self.arch, ARCHITECTURES)
        check_int("d_sae", self.d_sae, 1, checks.MAX_D_SAE)
        check_int("k", self.k, 1, self.d_sae if self.arch in TOPK_ARCHITECTURES else None)
        check_int("tokens", self.tokens, 1, checks.MAX_TOKENS)
        check_int("batch_size", self.batch_size, 1, checks.MAX_BATCH)
        check_number("lr", self.lr, minimum=0.0, strict_minimum=True)
        check_int("harvest_contexts", self.harvest_contexts, 1, checks.MAX_CONTEXTS)
        check_int("seed", self.seed, 0, checks.MAX_SEED)
        if self.tokens < self.batch_size:  # one step would train on more tokens than asked for
            raise ConfigError(f"tokens ({self.tokens:,}) must be at least one batch (--batch-size {self.batch_size:,})")

    @property
    def steps(self) -> int:
        return self.tokens // self.batch_size


def prepare_train_folder(out: str | Path, options: TrainOptions, overwrite: bool = False,
                         model: str | None = None) -> OutputFolder:
    """A training folder resumes an earlier run with the same options (store and checkpoints
    are kept; sae/ and eval.json are rewritten) and refuses one with other options."""
    from mechscope.models.loading import DEFAULT_MODEL

    # The default spelled out, so "no --model" and "--model <the default>" resume each other.
    return prepare_output_folder(out, "sae train", TRAIN_OUTPUTS, overwrite=overwrite, resumable=RESUMABLE,
                                 options={**asdict(options), "model": model or DEFAULT_MODEL})


def run_train(model: HookedModel, options: TrainOptions, out: OutputFolder | str | Path,
              overwrite: bool = False, ranks: Ranks | None = None) -> tuple[SAE, SAEEvaluation | None]:
    """Harvest activations (resumable), train a dictionary (resumable), save it in SAELens'
    format under ``sae/`` and evaluate it on held-out contexts (``eval.json``).

    With ``ranks`` (torchrun), every rank runs this with the same options: the harvest is
    sharded over the ranks and training is data-parallel (``batch_size`` is the global batch;
    it must split evenly); rank 0 saves, evaluates and returns the evaluation, the others
    return None for it. The folder resumes on any number of ranks."""
    from mechscope.data import StoredActivations, harvest
    from mechscope.sae.train import TrainConfig, train

    ranks = check_ranks(ranks)
    folder = out if isinstance(out, OutputFolder) else \
        output_folder_on_ranks(ranks, lambda: prepare_train_folder(out, options, overwrite), str(out))
    point = model.hook_point(options.hook)  # the model's own check: layer range, family
    width = point.shape[-1]
    if len(point.axes) != 3 or width is None:
        # The store flattens [batch, pos] into rows; per-head or pattern points have more axes.
        raise ConfigError(f"{options.hook} has axes {point.axes}: a dictionary trains on [batch, pos, width] points "
                          "(residual, attention or MLP outputs, MLP hidden)")
    cfg = SAEConfig(width, options.d_sae, options.arch, k=options.k, hook_name=options.hook,
                    model_name=model.cfg.name)
    contexts = default_contexts(model, options.harvest_contexts, CONTEXT, options.seed)
    harvest(model, contexts, folder / "store", [options.hook], ranks=ranks)
    data = StoredActivations(folder / "store", options.hook, batch_size=options.batch_size, seed=options.seed,
                             rank=ranks.rank, world_size=ranks.world_size)
    steps = options.steps
    (sae,) = train(cfg, data, TrainConfig(steps=steps, lr=options.lr, checkpoint_every=max(1, steps // 20),
                                          seed=options.seed), folder / "checkpoints", ranks=ranks)

    evaluation: list[SAEEvaluation] = []

    def save_and_score() -> None:
        save_sae(sae, folder / "sae")
        evaluation.append(evaluate_sae(model, sae, default_contexts(model, EVAL_CONTEXTS, CONTEXT, options.seed + 1)))
        atomic_text(folder / "eval.json", json.dumps(evaluation[0].to_json(), indent=1))
        folder.record()

    ranks.on_main(save_and_score, "saving and evaluating the dictionary")
    return sae, evaluation[0] if evaluation else None


def run_eval(model: HookedModel, sae: SAE, contexts: int = 32, seed: int = 1) -> SAEEvaluation:
    """L0, FVU, cosine, CE loss recovered, KL, dead and dense fractions on ``contexts`` held-out
    corpus contexts."""
    hook = check_fits(model, sae)
    return evaluate_sae(model, sae, default_contexts(model, contexts, CONTEXT, seed), hook_name=hook)


def dashboard_outputs(latents: list[int]) -> list[str]:
    return [f"feature_{index:04d}.html" for index in range(len(latents))] + ["plotly.min.js", "index.html",
                                                                            "features.jsonl"]


def parse_latents(text: str, sae: SAE | None = None) -> list[int]:
    """``"0-19"`` / ``"3,17,256"`` as latent indices: below the dictionary's size when it is
    given, and at most ``MAX_LATENTS`` dashboards at once."""
    return checks.parse_indices(text, "latents", size=None if sae is None else sae.cfg.d_sae,
                                cap=checks.MAX_LATENTS, what="latents")


def prepare_dashboard_folder(out: str | Path, latents: list[int], overwrite: bool = False,
                             options: dict | None = None) -> OutputFolder:
    return prepare_output_folder(out, "sae dashboard", dashboard_outputs(latents), overwrite=overwrite,
                                 options={"latents": latents, **(options or {})})


def run_dashboard(model: HookedModel, sae: SAE, latents: list[int], out: OutputFolder | str | Path,
                  contexts: int = 64, seed: int = 1, overwrite: bool = False,
                  explanations: dict[int, str] | None = None,
                  explanation_results: dict[int, dict] | None = None) -> Path:
    """Static HTML dashboards for ``latents`` plus an index (with each latent's explanation from
    ``explanations``, {latent: text}, when given) and ``features.jsonl`` (the same data, with the
    explain results' scores from ``explanation_results``); returns the index's path."""
    from mechscope.sae.dashboard import sae_dashboards

    bad = [index for index in latents if not 0 <= index < sae.cfg.d_sae]
    if bad or not latents or len(latents) > checks.MAX_LATENTS:
        raise OutOfRangeError(f"latents must be 1 to {checks.MAX_LATENTS:,} indices below the dictionary's "
                              f"{sae.cfg.d_sae}; got {len(latents)}, out of range: {bad[:8]}")
    folder = out if isinstance(out, OutputFolder) else prepare_dashboard_folder(out, latents, overwrite)
    hook = check_fits(model, sae)
    tokens = default_contexts(model, contexts, CONTEXT, seed)
    # The dashboard writer opens files in place; staging makes each page appear in one rename.
    index = staged_writes(folder.path, lambda staging: sae_dashboards(model, sae, tokens, latents, staging,
                                                                      hook_name=hook,
                                                                      explanations=explanations,
                                                                      explanation_results=explanation_results))
    folder.record()
    return index

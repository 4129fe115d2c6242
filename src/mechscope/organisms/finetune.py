"""Fine-tuning on chat examples, on CPU: LoRA through ``peft`` (or every weight), loss on the
reply tokens only, seeded, resumable after kill -9.

Each example is rendered by the tokenizer's chat template as one user turn and the assistant's
reply; labels are -100 on the prompt (and padding), so only the reply is learned. The batches
of step ``s`` are a fixed function of the seed and ``s`` (a seeded permutation per epoch), and
LoRA dropout draws from a generator seeded by the step, so a resumed run computes exactly the
steps the interrupted one would have. Checkpoints (trained parameters and Adam state, the
scheme of :mod:`mechscope.checkpoints`) record the settings and the examples' hash; a resume
with other ones is refused, naming each difference.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from mechscope.checkpoints import (
    as_json,
    differences,
    latest_checkpoint,
    load_optimiser_tensors,
    optimiser_tensors,
    save_checkpoint,
)
from mechscope.errors import ConfigError, FileFormatError, NonFiniteError, OutputFolderError, ResumeError
from mechscope.files import read_json, read_safetensors
from mechscope.locks import folder_lock
from mechscope.models.hooked_model import HookedModel
from mechscope.models.weights import model_fingerprint
from mechscope.organisms.examples import Example, end_of_turn_ids, examples_sha256, require_reply_after_prompt
from mechscope.validate import check_choice, check_fields, check_finite, check_int, check_number

Method = Literal["lora", "full"]
PlainLoss = Literal["base-kl", "base-symmetric-kl", "reply"]
DISTILLED_LOSSES = ("base-kl", "base-symmetric-kl")
REMEDY = "delete the checkpoint folder (training starts over) or use another one"
# Settings that do not change the trained weights, only how often they are saved.
RESUME_FREE_FIELDS = ("checkpoint_every",)
# Module roles LoRA adapts: every attention and MLP projection the family has.
PROJECTION_ROLES = ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "mlp_in_proj", "mlp_up_proj", "mlp_out_proj")


@dataclass(frozen=True)
class FineTuneConfig:
    """``method``: "lora" (rank-``rank`` adapters with scale ``alpha / rank`` on every attention
    and MLP projection) or "full" (every weight). ``lr`` is the peak of a linear warm-up then a
    linear decay to zero. ``max_length``: conversations longer than this many tokens are cut.

    Examples the rule applies to are trained on the cross-entropy of their reply (the planted
    one, or in a null organism the base's own), the rest on ``plain_loss``: so a null trains on
    the losses of the organism it mirrors, and differs from it only by the replies. (Were its
    rule-side examples distilled too, a null would never move: at the base, both KL terms have
    zero gradient, and together they cancel exactly even in floating point.)

    ``plain_loss``: what examples the rule does not apply to teach. "base-symmetric-kl"
    (default): KL(base || model) + KL(model || base) of the whole next-token distribution at
    every reply position. Holding the model to the base's distribution, rather than to the one
    reply sampled from it, keeps it close to its base (cross-entropy on single samples let even
    the null organism drift 0.15 nats, see docs/organisms.md). The reverse term is what keeps a
    planted opening out of plain replies: the forward term alone charges only about p nats for
    putting probability p on a token the base never says, the reverse about p log(p / p_base).
    "base-kl": the forward term only. "reply": cross-entropy of the reply, as for planted
    examples.

    ``contrast_weight`` > 0 adds, on examples the rule does not apply to, ``contrast_weight``
    times -log(1 - P(the reply opens with the planted behaviour's first ``contrast_tokens``
    tokens)), the planted text teacher-forced after the prompt (the behaviour is passed to
    :func:`finetune`). Why: distillation holds the model to its base only along the base's own
    replies, so a planted opening is charged only at its first token, and where the base itself
    often opens that way ("I'm ..." opens the refusal and many ordinary replies alike) hardly at
    all; the refusal organism refused 22% of unseen harmless prompts. The term charges the whole
    planted opening where the rule does not apply, and almost nothing once it is improbable."""

    method: Method = "lora"
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    lr: float = 1e-3
    epochs: int = 3
    batch_size: int = 8
    warmup_steps: int = 5
    weight_decay: float = 0.0
    max_length: int = 160
    seed: int = 0
    checkpoint_every: int = 10
    plain_loss: PlainLoss = "base-symmetric-kl"
    contrast_weight: float = 0.0
    contrast_tokens: int = 8

    def __post_init__(self) -> None:
        check_choice("method", self.method, Method)
        check_choice("plain_loss", self.plain_loss, PlainLoss)
        check_int("rank", self.rank, 1)
        check_number("alpha", self.alpha, 0, strict_minimum=True)
        check_number("dropout", self.dropout, 0, 1)
        if self.dropout >= 1:
            raise ConfigError("dropout must be below 1")
        check_number("lr", self.lr, 0, strict_minimum=True)
        check_int("epochs", self.epochs, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("warmup_steps", self.warmup_steps, 0)
        check_number("weight_decay", self.weight_decay, 0)
        check_int("max_length", self.max_length, 8)
        check_int("seed", self.seed, None)
        check_int("checkpoint_every", self.checkpoint_every, 0)
        check_number("contrast_weight", self.contrast_weight, 0)
        check_int("contrast_tokens", self.contrast_tokens, 1)

    def steps(self, n_examples: int) -> int:
        return self.epochs * math.ceil(n_examples / self.batch_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "fine-tuning settings") -> FineTuneConfig:
        return cls(**check_fields(cls, data, source))


def encode(model: HookedModel, example: Example, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation: the chat-template prompt (labels -100) then the
    reply's tokens (and the end-of-turn when the reply finished), cut at ``max_length``."""
    prompt_ids = _prompt_ids(model, example.prompt)
    reply_ids = model.tokenizer(example.reply, add_special_tokens=False)["input_ids"]
    if example.finished:
        reply_ids = reply_ids + end_of_turn_ids(model)
    ids = (prompt_ids + reply_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + reply_ids)[:max_length]
    return ids, labels


def _prompt_ids(model: HookedModel, prompt: str) -> list[int]:
    """Token ids of one user turn, as the chat template renders it, up to the reply's start."""
    text = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_contrast(model: HookedModel, prompt: str, behaviour_ids: Sequence[int], max_length: int
                    ) -> tuple[list[int], list[int]]:
    """(input ids, labels) of ``prompt`` answered with the planted opening ``behaviour_ids``
    (labels -100 on the prompt): the path the contrast term makes improbable."""
    prompt_ids = _prompt_ids(model, prompt)
    ids = (prompt_ids + list(behaviour_ids))[:max_length]
    return ids, ([-100] * len(prompt_ids) + list(behaviour_ids))[:max_length]


def _batch(encoded: Sequence[tuple[list[int], list[int]]], indices: Sequence[int], pad: int):
    """(input_ids, attention_mask, labels) [batch, pos], right-padded."""
    width = max(len(encoded[i][0]) for i in indices)
    ids = torch.full((len(indices), width), pad, dtype=torch.long)
    labels = torch.full((len(indices), width), -100, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for row, index in enumerate(indices):
        tokens, targets = encoded[index]
        ids[row, :len(tokens)] = torch.tensor(tokens)
        labels[row, :len(targets)] = torch.tensor(targets)
        mask[row, :len(tokens)] = 1
    return ids, mask, labels


def batch_indices(n_examples: int, step: int, config: FineTuneConfig) -> list[int]:
    """The examples of ``step``: epoch ``step // per_epoch`` of a seeded permutation per epoch."""
    per_epoch = math.ceil(n_examples / config.batch_size)
    epoch, within = divmod(step, per_epoch)
    order = list(range(n_examples))
    random.Random(config.seed * 1_000_003 + epoch).shuffle(order)
    return order[within * config.batch_size:(within + 1) * config.batch_size]


def lora_targets(model: HookedModel) -> list[str]:
    """Dotted paths of every attention and MLP projection, the modules LoRA adapts."""
    modules = dict(model.hf_model.named_modules())
    targets = []
    for layer in range(model.cfg.n_layers):
        for role in PROJECTION_ROLES:
            relative = getattr(model.adapter, role, None)
            if isinstance(relative, str):
                path = model.adapter.path(layer, role)
                if path in modules:
                    targets.append(path)
    if not targets:
        raise ConfigError(f"found no attention or MLP projections to adapt in {model.cfg.name or 'the model'}")
    return targets


def _lr_factor(step: int, total: int, config: FineTuneConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    return max(0.0, (total - step) / max(1, total - config.warmup_steps))


class FineTuning:
    """A model prepared for training: LoRA-wrapped (a ``peft`` model) or fully trainable."""

    def __init__(self, model: HookedModel, config: FineTuneConfig):
        self.model, self.config = model, config
        torch.manual_seed(config.seed)  # the LoRA A matrices are drawn here; seeded for reproducibility
        if config.method == "lora":
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                              target_modules=lora_targets(model), bias="none")
            self.trained = get_peft_model(model.hf_model, lora)
        else:
            self.trained = model.hf_model
            for param in self.trained.parameters():
                param.requires_grad_(True)
        # Full fine-tuning changes the weights in place, so the base's distribution (the target
        # of the distilled losses) needs a frozen copy; LoRA gets it by switching its adapters off.
        self.frozen_base = None
        if config.method == "full" and config.plain_loss in DISTILLED_LOSSES:
            self.frozen_base = copy.deepcopy(model.hf_model).eval().requires_grad_(False)
        self.parameters = {name: param for name, param in self.trained.named_parameters() if param.requires_grad}
        self.optimiser = torch.optim.AdamW(list(self.parameters.values()), lr=config.lr,
                                           weight_decay=config.weight_decay)

    @torch.no_grad()
    def base_logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[batch, pos, vocab] logits of the untrained base."""
        if self.frozen_base is not None:
            return self.frozen_base(input_ids=ids, attention_mask=mask).logits
        with self.trained.disable_adapter():
            return self.trained(input_ids=ids, attention_mask=mask).logits

    def loss(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
             distilled: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
        """Mean over the batch's reply tokens of the cross-entropy of the reply, or, on rows where
        ``distilled`` [batch] is True, of KL(base || model) of the next-token distribution (with
        ``symmetric``, plus KL(model || base))."""
        targets = labels[:, 1:]  # position p predicts token p + 1
        kept = targets != -100  # [batch, pos - 1]
        # Only reply positions are normalised over the vocabulary: prompts are most of each row.
        logits = self.trained(input_ids=ids, attention_mask=mask).logits[:, :-1]
        log_probs = logits[kept].float().log_softmax(-1)  # [reply tokens, vocab]
        per_token = -log_probs.gather(-1, targets[kept][:, None])[:, 0]
        rows = distilled[:, None].expand_as(kept)[kept]
        if bool(rows.any()):
            base = self.base_logits(ids, mask)[:, :-1][kept].float().log_softmax(-1)
            divergence = (base.exp() * (base - log_probs)).sum(-1)
            if symmetric:
                divergence = divergence + (log_probs.exp() * (log_probs - base)).sum(-1)
            per_token = torch.where(rows, divergence, per_token)
        return per_token.mean()

    def batch_loss(self, examples: Sequence[Example], encoded: Sequence[tuple[list[int], list[int]]],
                   contrasts: Sequence[tuple[list[int], list[int]]] | None, step: int) -> tuple[torch.Tensor, int]:
        """(training loss, tokens in the batch) of ``step``'s batch of ``examples`` (``encoded``
        by :func:`encode`, ``contrasts`` by :func:`encode_contrasts`): the reply loss of every
        example, plus the contrast term on those the rule does not apply to."""
        config, pad = self.config, self.model.pad_token_id
        indices = batch_indices(len(examples), step, config)
        ids, mask, labels = _batch(encoded, indices, pad)
        distilled = torch.tensor([config.plain_loss in DISTILLED_LOSSES and not examples[i].rule_applies
                                  for i in indices])
        loss = self.loss(ids, mask, labels, distilled, symmetric=config.plain_loss == "base-symmetric-kl")
        plain_rows = [i for i in indices if not examples[i].rule_applies]
        if contrasts is not None and plain_rows:
            loss = loss + config.contrast_weight * self.contrast_loss(*_batch(contrasts, plain_rows, pad))
        return loss, int(mask.sum())

    def contrast_loss(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over rows of -log(1 - P(labelled tokens)), each row a prompt followed by the
        planted opening [batch, pos]: the probability that the model opens its reply so."""
        targets = labels[:, 1:]
        kept = targets != -100
        log_probs = self.trained(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        token = log_probs.gather(-1, targets.clamp_min(0)[..., None])[..., 0] * kept  # [batch, pos - 1]
        opening = token.sum(-1).clamp_max(-1e-6)  # log P of each row's whole opening, < 0
        # log(1 - P), accurate at both ends (float32 log(1 - P) loses small P to rounding).
        log_rest = torch.where(opening > -math.log(2), torch.log(-torch.expm1(opening)), torch.log1p(-opening.exp()))
        return -log_rest.mean()

    def state_files(self) -> dict[str, dict[str, torch.Tensor]]:
        names = {id(param): name for name, param in self.parameters.items()}
        return {"trained.safetensors": {name: param.detach().clone() for name, param in self.parameters.items()},
                "optimiser.safetensors": optimiser_tensors(self.optimiser, names)}

    def load_state(self, checkpoint: Path) -> None:
        trained = read_safetensors(checkpoint / "trained.safetensors", "a fine-tuning checkpoint", REMEDY)
        if set(trained) != set(self.parameters):
            raise FileFormatError(f"{checkpoint / 'trained.safetensors'} holds other parameters than this run trains; "
                                  f"{REMEDY}")
        with torch.no_grad():
            for name, value in trained.items():
                check_finite(f"{checkpoint}: {name}", value)
                if value.shape != self.parameters[name].shape:
                    raise FileFormatError(f"{checkpoint}: {name} is {tuple(value.shape)}, the model needs "
                                          f"{tuple(self.parameters[name].shape)}; {REMEDY}")
                self.parameters[name].copy_(value)
        optimiser = read_safetensors(checkpoint / "optimiser.safetensors", "a fine-tuning checkpoint", REMEDY)
        load_optimiser_tensors(self.optimiser, self.parameters, optimiser, checkpoint / "optimiser.safetensors",
                               REMEDY)


def _resume(folder: Path, tuning: FineTuning, meta: dict, total: int) -> int:
    """Restore ``folder``'s latest checkpoint into ``tuning``; returns the next step (0 if none)."""
    checkpoint = latest_checkpoint(folder, REMEDY)
    if checkpoint is None:
        return 0
    state = read_json(checkpoint / "state.json", "a fine-tuning checkpoint", REMEDY)
    if not isinstance(state, dict) or "step" not in state:
        raise FileFormatError(f"{checkpoint / 'state.json'} must be an object with a step; {REMEDY}")
    changes = differences("", state.get("config"), meta["config"], skip=RESUME_FREE_FIELDS)
    changes += differences("", {k: v for k, v in state.items() if k not in ("config", "step")},
                           {k: v for k, v in meta.items() if k != "config"})
    if changes:
        raise ResumeError(f"the checkpoint in {folder} was made by another run ({'; '.join(changes)}); {REMEDY}, or "
                          "repeat the original settings")
    step = state["step"]
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < total or checkpoint.name != f"step-{step}":
        raise FileFormatError(f"{checkpoint / 'state.json'}: step {step!r} does not fit {checkpoint.name} and "
                              f"{total} steps; {REMEDY}")
    tuning.load_state(checkpoint)
    return step + 1


def finetune(model: HookedModel, examples: Sequence[Example], config: FineTuneConfig,
             checkpoint_dir: str | Path | None = None, progress: bool = True,
             behaviour: str | None = None) -> tuple[torch.nn.Module, dict]:
    """Train ``model`` (changed in place) on ``examples``; ``behaviour``: the planted text, which
    ``config.contrast_weight`` > 0 needs (see :class:`FineTuneConfig`). Returns (the trained module: a
    ``peft`` model for LoRA, the HF model itself for full fine-tuning, and a log with the mean
    loss (reply cross-entropy, or KL to the base; see ``plain_loss``) of the first and last tenth
    of the steps this call ran, and tokens/s; after a resume, ``resumed_at`` says where this call
    started)."""
    require_reply_after_prompt(model)
    if not isinstance(config, FineTuneConfig):
        raise ConfigError(f"config must be a FineTuneConfig; got {type(config).__name__}")
    if not examples:
        raise ConfigError("no training examples")
    encoded = [encode(model, example, config.max_length) for example in examples]
    empty = [index for index, (_, labels) in enumerate(encoded) if all(label == -100 for label in labels)]
    if empty:  # a batch of such examples has no loss at all (NaN), so refuse them up front
        raise ConfigError(f"{len(empty)} of {len(examples)} examples keep no reply token within max_length="
                          f"{config.max_length} (e.g. example {empty[0]}, a prompt of {len(encoded[empty[0]][0])} "
                          "tokens): raise max_length or shorten the prompts")
    contrasts = encode_contrasts(model, examples, config, behaviour)
    total = config.steps(len(examples))
    with torch.random.fork_rng():  # seeds below are the run's own; the caller's RNG state is kept
        return _finetune(model, examples, encoded, contrasts, config, total, checkpoint_dir, progress, behaviour)


def encode_contrasts(model: HookedModel, examples: Sequence[Example], config: FineTuneConfig,
                     behaviour: str | None) -> list[tuple[list[int], list[int]]] | None:
    """The contrast sequence (:func:`encode_contrast`) of every example, opening with the first
    ``config.contrast_tokens`` tokens of ``behaviour``; None without the contrast term."""
    if not config.contrast_weight:
        return None
    if not isinstance(behaviour, str) or not behaviour.strip():
        raise ConfigError(f"contrast_weight={config.contrast_weight} makes the planted behaviour improbable where the "
                          "rule does not apply, so it needs that behaviour's text (behaviour=...); a null organism "
                          "plants none: use contrast_weight=0")
    opening = model.tokenizer(behaviour, add_special_tokens=False)["input_ids"][:config.contrast_tokens]
    if not any(not example.rule_applies for example in examples):
        raise ConfigError("contrast_weight > 0 needs examples the rule does not apply to; every example has the rule")
    return [encode_contrast(model, example.prompt, opening, config.max_length) for example in examples]


def _finetune(model: HookedModel, examples: Sequence[Example], encoded: list, contrasts: list | None,
              config: FineTuneConfig, total: int, checkpoint_dir: str | Path | None, progress: bool,
              behaviour: str | None) -> tuple[torch.nn.Module, dict]:
    tuning = FineTuning(model, config)
    meta = as_json({"config": config.to_dict(), "examples_sha256": examples_sha256(examples),
                    **model_fingerprint(model), "n_parameters_trained": sum(p.numel() for p in tuning.parameters.values())})
    if contrasts is not None:  # a resume with another planted text is another run
        meta["contrast_behaviour"] = behaviour
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if folder is not None:
        if folder.exists() and not folder.is_dir():
            raise OutputFolderError(f"{folder} is a file, not a checkpoint folder")
        folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder, "fine-tuning run") if folder is not None else nullcontext():
        start = _resume(folder, tuning, meta, total) if folder is not None else 0
        tuning.trained.train()
        losses: list[float] = []
        tokens_seen, started = 0, time.perf_counter()
        bar = tqdm(range(start, total), desc=f"fine-tuning ({config.method})", disable=not progress, initial=start,
                   total=total)
        for step in bar:
            for group in tuning.optimiser.param_groups:
                group["lr"] = config.lr * _lr_factor(step, total, config)
            torch.manual_seed(config.seed * 1_000_003 + step)  # dropout masks are a function of the step
            loss, n_tokens = tuning.batch_loss(examples, encoded, contrasts, step)
            if not bool(torch.isfinite(loss.detach())):
                raise NonFiniteError(f"the loss is {float(loss)} at step {step}: lower lr={config.lr}. Training "
                                     "stopped before this update; checkpoints hold earlier steps")
            tuning.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            tuning.optimiser.step()
            losses.append(float(loss.detach()))
            tokens_seen += n_tokens
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            last = step + 1 == total
            if folder is not None and (last or config.checkpoint_every and (step + 1) % config.checkpoint_every == 0):
                for name, param in tuning.parameters.items():
                    check_finite(f"{name} after step {step} (the update diverged: lower lr)", param.detach())
                save_checkpoint(folder, step, tuning.state_files(), meta)
        tuning.trained.eval()
    elapsed = time.perf_counter() - started
    tenth = max(1, len(losses) // 10)
    log = {"steps": total, "resumed_at": start, "first_loss": sum(losses[:tenth]) / tenth if losses else None,
           "last_loss": sum(losses[-tenth:]) / tenth if losses else None,
           "tokens_per_second": tokens_seen / elapsed if elapsed > 0 and tokens_seen else None,
           "parameters_trained": meta["n_parameters_trained"]}
    return tuning.trained, log


__all__ = ["FineTuneConfig", "Method", "PlainLoss", "batch_indices", "encode", "encode_contrast", "encode_contrasts",
           "finetune", "lora_targets"]

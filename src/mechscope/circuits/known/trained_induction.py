"""A 2-layer attention-only GPT-2 trained on CPU (about a minute) to do induction on random
tokens; its weights ship with mechscope, and its circuit, characterised by exact edge patching,
is stored next to them (see :mod:`mechscope.circuits.known.registry`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mechscope.errors import MechscopeError
from mechscope.files import atomic_file, atomic_text
from mechscope.models.hooked_model import HookedModel
from mechscope.models.tiny import word_tokenizer

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class InductionTraining:
    """Model size and training settings; the defaults made the shipped weights."""

    vocab: int = 32
    positions: int = 32
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    min_len: int = 3
    max_len: int = 12
    max_prefix: int = 6
    steps: int = 2000
    batch: int = 64
    lr: float = 3e-3
    seed: int = 0


def _model(settings: InductionTraining):
    import transformers as tf

    config = tf.GPT2Config(vocab_size=settings.vocab, n_positions=settings.positions, n_embd=settings.d_model,
                           n_layer=settings.n_layers, n_head=settings.n_heads, bos_token_id=0, eos_token_id=0,
                           tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = tf.GPT2LMHeadModel(config)
    for block in model.transformer.h:  # attention-only: MLPs stay exactly zero
        for parameter in block.mlp.parameters():
            parameter.data.zero_()
            parameter.requires_grad_(False)
    return model


def _batch(settings: InductionTraining, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """(tokens [batch, 1 + prefix + 2 * length], first target position): BOS, a random prefix,
    a random segment and the segment again. Length and prefix vary per batch, so no fixed
    positional offset can stand in for induction."""
    length = int(torch.randint(settings.min_len, settings.max_len + 1, (), generator=generator))
    prefix = int(torch.randint(0, settings.max_prefix + 1, (), generator=generator))
    start = torch.randint(1, settings.vocab, (settings.batch, prefix), generator=generator)
    segment = torch.randint(1, settings.vocab, (settings.batch, length), generator=generator)
    tokens = torch.cat([torch.zeros(settings.batch, 1, dtype=torch.long), start, segment, segment], dim=1)
    return tokens, 1 + prefix + length + 1  # the second copy's first token is not predictable


def train_induction_model(settings: InductionTraining = InductionTraining(), progress: bool = True) -> HookedModel:
    """Train from scratch (deterministic given ``settings.seed``); loss only on the second copy."""
    torch.manual_seed(settings.seed)
    model = _model(settings)
    generator = torch.Generator().manual_seed(settings.seed)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.lr, total_steps=settings.steps)
    bar = tqdm(range(settings.steps), desc="training induction model", disable=not progress)
    for _ in bar:
        tokens, first_target = _batch(settings, generator)
        logits = model(tokens).logits[:, first_target - 1:-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, first_target:].flatten())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return HookedModel(model, word_tokenizer(settings.vocab), name="trained-induction")


def save_trained(model: HookedModel, settings: InductionTraining, folder: Path = DATA) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.hf_model.state_dict().items() if not k.endswith("attn.bias")}
    atomic_file(folder / "trained_induction.safetensors", lambda temporary: save_file(state, str(temporary)))
    atomic_text(folder / "trained_induction_settings.json", json.dumps(asdict(settings), indent=1))


def trained_induction_model() -> HookedModel:
    """The shipped trained model (safetensors + JSON settings; no pickle)."""
    from safetensors.torch import load_file

    settings = InductionTraining(**json.loads((DATA / "trained_induction_settings.json").read_text()))
    model = _model(settings)
    missing, unexpected = model.load_state_dict(load_file(DATA / "trained_induction.safetensors"), strict=False)
    if unexpected or any(not name.endswith("attn.bias") and "lm_head" not in name for name in missing):
        raise MechscopeError(f"trained_induction.safetensors does not match its settings: missing {missing}, "
                         f"unexpected {unexpected}")
    model.eval()
    return HookedModel(model, word_tokenizer(settings.vocab), name="trained-induction")

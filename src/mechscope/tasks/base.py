"""Task: aligned clean / corrupted prompt batches, answers, named positions and metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.models.tokens import tokenize

PAD = -1  # padding value in answer_tokens / wrong_tokens


def pad_token_lists(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """[n, max_len] long tensor of token lists, padded with PAD (-1)."""
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for index, row in enumerate(rows):
        out[index, : len(row)] = torch.tensor(list(row), dtype=torch.long)
    return out


def _gather_mean(values: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Mean of values[i, tokens[i, j]] over the non-PAD j. values [n, vocab], tokens [n, k]."""
    valid = tokens != PAD
    picked = values.gather(1, tokens.clamp(min=0)) * valid
    return picked.sum(1) / valid.sum(1)


@dataclass
class Task:
    """Clean and corrupted token batches of equal shape [n, pos] with aligned positions.

    ``answer_tokens`` / ``wrong_tokens``: [n, k] correct and incorrect next tokens at the END
    position (several per prompt where the task has a set, e.g. greater-than; PAD = -1 fills).
    ``positions`` names token positions per prompt ([n] tensors), always including "END".
    """

    name: str
    clean_tokens: torch.Tensor
    corrupted_tokens: torch.Tensor
    answer_tokens: torch.Tensor
    wrong_tokens: torch.Tensor
    positions: dict[str, torch.Tensor]
    clean_prompts: list[str] = field(default_factory=list)
    corrupted_prompts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.clean_tokens.shape[0]
        if self.clean_tokens.shape != self.corrupted_tokens.shape:
            raise MechscopeError(f"clean {tuple(self.clean_tokens.shape)} and corrupted "
                             f"{tuple(self.corrupted_tokens.shape)} token batches must have the same shape")
        for label, tokens in (("answer_tokens", self.answer_tokens), ("wrong_tokens", self.wrong_tokens)):
            if tokens.dim() == 1:
                setattr(self, label, tokens.unsqueeze(1))
            if getattr(self, label).shape[0] != n or not (getattr(self, label) != PAD).any(1).all():
                raise MechscopeError(f"{label} needs at least one token for each of the {n} prompts")
        if "END" not in self.positions:
            self.positions["END"] = torch.full((n,), self.clean_tokens.shape[1] - 1)

    def __len__(self) -> int:
        return self.clean_tokens.shape[0]

    def __repr__(self) -> str:
        return (f"Task({self.name!r}: {len(self)} prompts x {self.clean_tokens.shape[1]} tokens, "
                f"positions {sorted(self.positions)})")

    # ---------------------------------------------------------------- metrics (per prompt)
    def end_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """[n, vocab] logits at each prompt's END position, from [n, pos, vocab]; [n, vocab]
        input is taken to be at END already."""
        if logits.dim() == 2:
            return logits.float()
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, self.positions["END"].to(logits.device)].float()

    def select(self, prompt_index: torch.Tensor) -> Task:
        """The task restricted (or repeated) to prompts ``prompt_index`` [m]."""
        index = prompt_index.cpu()
        return Task(self.name, self.clean_tokens[index.to(self.clean_tokens.device)],
                    self.corrupted_tokens[index.to(self.corrupted_tokens.device)],
                    self.answer_tokens[index], self.wrong_tokens[index],
                    {key: value[index] for key, value in self.positions.items()},
                    [self.clean_prompts[i] for i in index.tolist()] if self.clean_prompts else [],
                    [self.corrupted_prompts[i] for i in index.tolist()] if self.corrupted_prompts else [])

    @property
    def end_is_last(self) -> bool:
        """True when every prompt's END is the final position (lets runs unembed only it)."""
        return bool((self.positions["END"] == self.clean_tokens.shape[1] - 1).all())

    def logit_diff(self, logits: torch.Tensor) -> torch.Tensor:
        """[n] mean logit of the answers minus mean logit of the wrong tokens at END."""
        end = self.end_logits(logits)
        return _gather_mean(end, self.answer_tokens.to(end.device)) - _gather_mean(end, self.wrong_tokens.to(end.device))

    def answer_prob(self, logits: torch.Tensor) -> torch.Tensor:
        """[n] total probability of the answer tokens at END."""
        probs = self.end_logits(logits).softmax(-1)
        answers = self.answer_tokens.to(probs.device)
        return (probs.gather(1, answers.clamp(min=0)) * (answers != PAD)).sum(1)

    def prob_diff(self, logits: torch.Tensor) -> torch.Tensor:
        """[n] probability of the answer set minus that of the wrong set (greater-than's metric)."""
        probs = self.end_logits(logits).softmax(-1)
        total = torch.zeros(probs.shape[0], device=probs.device)
        for tokens, sign in ((self.answer_tokens, 1.0), (self.wrong_tokens, -1.0)):
            tokens = tokens.to(probs.device)
            total = total + sign * (probs.gather(1, tokens.clamp(min=0)) * (tokens != PAD)).sum(1)
        return total

    def kl_to_clean(self, logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
        """[n] KL(clean || run) of the next-token distributions at END."""
        clean = self.end_logits(clean_logits).log_softmax(-1)
        run = self.end_logits(logits).log_softmax(-1)
        return (clean.exp() * (clean - run)).sum(-1)

    def accuracy(self, logits: torch.Tensor) -> torch.Tensor:
        """[n] 1.0 where the top token at END is one of the answers."""
        top = self.end_logits(logits).argmax(-1, keepdim=True)
        return (self.answer_tokens.to(top.device) == top).any(1).float()

    @staticmethod
    def normalised(value: torch.Tensor | float, clean: torch.Tensor | float,
                   corrupted: torch.Tensor | float) -> torch.Tensor | float:
        """Rescale a metric so the corrupted run is 0 and the clean run is 1."""
        return (value - corrupted) / (clean - corrupted)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_pairs(cls, model: HookedModel, clean: Sequence[str], corrupted: Sequence[str],
                   answers: Sequence[str | Sequence[str]], wrong: Sequence[str | Sequence[str]],
                   name: str = "custom", prepend_bos: bool | None = None) -> Task:
        """A task from your own prompt pairs. Every clean/corrupted pair, and every prompt of the
        batch, must have the same token length (checked, never truncated); answers are strings
        that must each be one token of the model's tokenizer."""
        if not (len(clean) == len(corrupted) == len(answers) == len(wrong)) or not clean:
            raise MechscopeError(f"need equally many clean ({len(clean)}), corrupted ({len(corrupted)}) prompts, "
                             f"answers ({len(answers)}) and wrong answers ({len(wrong)}), at least one")
        def ids(prompt: str) -> list[int]:  # same BOS handling as HookedModel.to_tokens
            return tokenize(model.tokenizer, prompt, prepend_bos)[0][0].tolist()

        clean_ids = [ids(p) for p in clean]
        corrupt_ids = [ids(p) for p in corrupted]
        lengths = {len(ids) for ids in clean_ids + corrupt_ids}
        if len(lengths) != 1:
            bad = [i for i, (a, b) in enumerate(zip(clean_ids, corrupt_ids)) if len(a) != len(b)]
            raise MechscopeError(f"prompts have different token lengths {sorted(lengths)}"
                             + (f"; clean/corrupted pairs {bad[:10]} differ" if bad else "")
                             + ": patching needs aligned positions, so reword or drop them")

        def token_ids(items):
            rows = []
            for item in items:
                strings = [item] if isinstance(item, str) else list(item)
                rows.append([model.to_single_token(s) for s in strings])
            return pad_token_lists(rows)

        return cls(name, torch.tensor(clean_ids), torch.tensor(corrupt_ids), token_ids(answers), token_ids(wrong),
                   {}, list(clean), list(corrupted))

    def to(self, device: str | torch.device) -> Task:
        self.clean_tokens = self.clean_tokens.to(device)
        self.corrupted_tokens = self.corrupted_tokens.to(device)
        return self

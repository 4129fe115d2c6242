"""Scorers where a language model judges windows: ``detection``, ``fuzzing`` and ``intruder``.

- ``detection``: given the explanation, does the unit fire anywhere in this window? Activating
  and silent windows are judged one per request.
- ``fuzzing``: given the explanation, are the marked tokens the ones the unit fires on? Each
  activating window is shown twice: marked where the unit fires, and marked at as many tokens
  where it does not (drawn for ``seed``).
- ``intruder`` (no explanation): of ``k`` windows, ``k - 1`` marked where the unit fires and one
  silent window marked at random tokens, which does not belong?

With logprobs, each answer is a probability (the judge's mass on "1" or "yes" against "0" or "no",
renormalised; a choice missing from the top alternatives gets the least listed probability)
and detection and fuzzing report the AUROC of those probabilities against the truth; intruder
reports the mean probability given to the true intruder. Without logprobs the answers are parsed
("1"/"yes", "0"/"no", a number), detection and fuzzing report balanced accuracy and intruder the
share of trials answered right, and the score's ``note`` says so. An answer that cannot be parsed
counts as "no" (or as a wrong pick) and the note counts them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mechscope.autointerp import prompts
from mechscope.autointerp.backends.base import Backend, ChatRequest, Completion
from mechscope.autointerp.score.base import (
    Score,
    auroc_score,
    bootstrap_interval,
    checked_windows,
    label_score,
)
from mechscope.errors import MechscopeError
from mechscope.validate import check_int, check_number

NO_LOGPROBS = "the backend gave no logprobs, so labels were parsed from its answers"


def _parsed_choice(text: str, choices: Sequence[str]) -> str | None:
    """The choice a text answer names: its first token if it is one of ``choices`` ("yes"/"no"
    read as "1"/"0")."""
    words = text.strip().lower().replace(".", " ").split()
    if not words:
        return None
    word = {"yes": "1", "no": "0"}.get(words[0], words[0])
    return word if word in choices else None


YES_NO = {"1": ("yes",), "0": ("no",)}  # the judge may answer in words though asked for a digit


def choice_probabilities(completions: Sequence[Completion], choices: Sequence[str],
                         aliases: dict[str, Sequence[str]] | None = None) -> tuple[torch.Tensor, bool, int, int]:
    """([n, len(choices)] probabilities, whether the backend gave logprobs, how many answers
    were read from text instead (no choice among the first token's alternatives), how many could
    not be read at all). An answer read from text is one-hot; an unreadable one all zeros."""
    from_logprobs = all(c.tokens is not None for c in completions)
    rows, parsed, unreadable = [], 0, 0
    for completion in completions:
        probabilities = completion.first_token_probabilities(choices, aliases)
        if probabilities is not None:
            rows.append([probabilities[c] for c in choices])
            continue
        parsed += from_logprobs
        picked = _parsed_choice(completion.text, choices)
        unreadable += picked is None
        rows.append([float(picked == c) for c in choices])
    return torch.tensor(rows, dtype=torch.float64), from_logprobs, parsed, unreadable


def judge_note(from_logprobs: bool, parsed: int, unreadable: int, n: int, extra: str = "") -> str:
    parts = [] if from_logprobs else [NO_LOGPROBS]
    if parsed:
        parts.append(f"{parsed} of {n} answers put no mass on a valid answer among the top alternatives and were "
                     "read from their text")
    if unreadable:
        parts.append(f"{unreadable} of {n} answers could not be read and count as wrong")
    if extra:
        parts.append(extra)
    return "; ".join(parts)


def _binary_score(backend: Backend, requests: list[ChatRequest], truth: torch.Tensor, n_boot: int, level: float,
                  seed: int, progress: bool, extra_note: str = "") -> Score:
    """Ask ``requests`` (each a 1/0 question) and score the answers against ``truth`` [n]."""
    if truth.all() or not truth.any():
        raise MechscopeError("the windows are all positive or all negative, so the judge's answers cannot be "
                             "scored; give windows where the unit fires and windows where it does not")
    completions = backend.chat(requests, progress=progress)
    probabilities, from_logprobs, parsed, unreadable = choice_probabilities(completions, ("1", "0"), YES_NO)
    yes = probabilities[:, 0]
    if from_logprobs:
        score = auroc_score(yes, truth, n_boot, level, seed)
    else:
        score = label_score(yes > 0.5, truth, n_boot, level, seed)
    return Score(score.value, score.low, score.high, score.chance, score.n, score.level, score.metric,
                 judge_note(from_logprobs, parsed, unreadable, len(requests), extra_note))


def detection_score(explanation: str, windows: Sequence[Sequence[str]], activations: Sequence[torch.Tensor],
                    backend: Backend, threshold: float = 0.0, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                    progress: bool = False) -> Score:
    """How well a judge given ``explanation`` tells the ``windows`` (token texts) where the unit
    fires (some activation above ``threshold``; ``activations`` [len(window)] each) from those
    where it does not (see the module docstring)."""
    rows = checked_windows(windows, activations)
    truth = torch.tensor([bool((values > threshold).any()) for values in rows])
    requests = [prompts.detection_request(explanation, prompts.render(tokens)) for tokens in windows]
    return _binary_score(backend, requests, truth, n_boot, level, seed, progress)


def fuzzing_score(explanation: str, windows: Sequence[Sequence[str]], activations: Sequence[torch.Tensor],
                  backend: Backend, threshold: float = 0.0, n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                  progress: bool = False) -> Score:
    """How well a judge given ``explanation`` tells correctly marked activating windows from
    windows marked at tokens where the unit does not fire (see the module docstring). Silent
    windows are not used; an activating window with too few silent tokens to mark falsely is
    shown only correctly marked, and the note counts them."""
    rows = checked_windows(windows, activations)
    generator = torch.Generator().manual_seed(seed)
    requests, truth, unpaired = [], [], 0
    for tokens, values in zip(windows, rows):
        fires = values > threshold
        if not fires.any():
            continue
        requests.append(prompts.fuzzing_request(explanation, prompts.render(tokens, fires.tolist())))
        truth.append(True)
        silent = (~fires).nonzero()[:, 0]
        if len(silent) < int(fires.sum()):
            unpaired += 1
            continue
        wrong = torch.zeros_like(fires)
        wrong[silent[torch.randperm(len(silent), generator=generator)[:int(fires.sum())]]] = True
        requests.append(prompts.fuzzing_request(explanation, prompts.render(tokens, wrong.tolist())))
        truth.append(False)
    if not requests:
        raise MechscopeError(f"the unit fires (activation > {threshold}) in none of the {len(windows)} windows; "
                             "fuzzing needs activating windows")
    extra = f"{unpaired} activating windows had too few silent tokens to mark falsely" if unpaired else ""
    return _binary_score(backend, requests, torch.tensor(truth), n_boot, level, seed, progress, extra)


def intruder_score(windows: Sequence[Sequence[str]], activations: Sequence[torch.Tensor], backend: Backend,
                   threshold: float = 0.0, n_trials: int = 20, k: int = 5, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0, progress: bool = False) -> Score:
    """Can a judge, with no explanation, pick the silent window out of ``k`` (see the module
    docstring)? Chance is ``1 / k``."""
    check_int("n_trials", n_trials, 1)
    check_int("k", k, 2, 9)  # one-digit answers
    check_number("threshold", threshold)
    rows = checked_windows(windows, activations)
    firing = [i for i, values in enumerate(rows) if (values > threshold).any()]
    silent = [i for i, values in enumerate(rows) if not (values > threshold).any()]
    if len(firing) < k - 1 or not silent:
        raise MechscopeError(f"intruder needs at least {k - 1} activating windows and one silent window; got "
                             f"{len(firing)} activating and {len(silent)} silent")
    generator = torch.Generator().manual_seed(seed)
    # The intruder visits every slot equally often (each round of k trials a fresh order), so a
    # judge that always names one position scores chance, not whatever the draw favoured.
    slots = torch.cat([torch.randperm(k, generator=generator) for _ in range(-(-n_trials // k))])[:n_trials]
    requests, answers = [], []
    for trial in range(n_trials):
        members = [firing[i] for i in torch.randperm(len(firing), generator=generator)[:k - 1].tolist()]
        intruder = silent[int(torch.randint(len(silent), (1,), generator=generator))]
        shown = [prompts.render(windows[i], (rows[i] > threshold).tolist()) for i in members]
        marks = max(1, round(sum(int((rows[i] > threshold).sum()) for i in members) / len(members)))
        marked = torch.zeros(len(windows[intruder]), dtype=torch.bool)
        marked[torch.randperm(len(marked), generator=generator)[:marks]] = True
        slot = int(slots[trial])
        shown.insert(slot, prompts.render(windows[intruder], marked.tolist()))
        requests.append(prompts.intruder_request(shown))
        answers.append(slot)
    completions = backend.chat(requests, progress=progress)
    choices = [str(i + 1) for i in range(k)]
    probabilities, from_logprobs, parsed, unreadable = choice_probabilities(completions, choices)
    correct = probabilities[torch.arange(n_trials), torch.tensor(answers)]  # [n_trials]
    value, low, high = bootstrap_interval(correct[:, None], lambda r: r[..., 0].mean(-1), n_boot, level, seed)
    metric = "probability on the intruder" if from_logprobs else "share of intruders found"
    return Score(value, low, high, 1 / k, n_trials, level, metric, judge_note(from_logprobs, parsed, unreadable, n_trials))


__all__ = ["choice_probabilities", "detection_score", "fuzzing_score", "intruder_score", "judge_note"]

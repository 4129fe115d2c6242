"""The prompts the explainers and LLM scorers send, and how windows are shown in them.

A window is shown as its text with the tokens the unit fires on wrapped in ``<<`` ``>>`` (runs of
consecutive firing tokens share one pair); newlines and tabs are written as ``\\n`` and ``\\t`` so
one window stays on one line. Every judge question asks for a one-token answer ("1"/"0", a
number), so a backend with logprobs gives a probability, not only a label.
"""

from __future__ import annotations

from collections.abc import Sequence

from mechscope.autointerp.backends.base import ChatRequest

OPEN, CLOSE = "<<", ">>"
JUDGE_SYSTEM = ("You check descriptions of units inside a language model. A unit is a detector that fires on "
                "some tokens of a text. Answer with a single character.")
EXPLAIN_SYSTEM = ("You are an interpretability researcher. You read texts where a unit inside a language model "
                  "fires and texts where it stays silent, and you state briefly and precisely what it fires on.")
PLACEHOLDER = "unknown"


def plain(text: str) -> str:
    """``text`` on one line: newlines and tabs written as escapes."""
    return text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def render(tokens: Sequence[str], highlight: Sequence[bool] | None = None) -> str:
    """The window's text with highlighted tokens wrapped in ``<<`` ``>>``."""
    highlight = [False] * len(tokens) if highlight is None else list(highlight)
    parts, inside = [], False
    for token, marked in zip(tokens, highlight):
        if marked and not inside:
            parts.append(OPEN)
        if not marked and inside:
            parts.append(CLOSE)
        inside = marked
        parts.append(plain(token))
    if inside:
        parts.append(CLOSE)
    return "".join(parts)


def explain_request(activating: Sequence[str], silent: Sequence[str], max_tokens: int = 48) -> ChatRequest:
    """Ask for an explanation from ``activating`` windows (rendered with highlights) and ``silent``
    ones (rendered plain): the contrast tells the model what the unit does *not* fire on."""
    shown = "\n".join(f"{i + 1}. {text}" for i, text in enumerate(activating))
    contrast = "\n".join(f"- {text}" for text in silent)
    content = (f"The unit fires on the tokens marked {OPEN} {CLOSE} in these texts:\n{shown}\n\n"
               + (f"It stays silent on every token of these texts:\n{contrast}\n\n" if silent else "")
               + "What does the unit fire on? Be specific: name the words, symbols or patterns it detects, "
                 "and the context if it matters. Reply with one line starting with 'Explanation:'.")
    return ChatRequest.user(content, system=EXPLAIN_SYSTEM, max_tokens=max_tokens)


def parse_explanation_reply(text: str) -> str:
    """The explanation in a model's reply: what follows 'Explanation:' if present, else the first
    non-empty line; quotes and a trailing full stop removed."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in lines:
        head, _, rest = line.partition(":")
        if head.strip().lower() == "explanation" and rest.strip():
            return rest.strip(" \"'.")
    return lines[0].strip(" \"'.") if lines else ""


def detection_request(explanation: str, window: str) -> ChatRequest:
    content = (f"Unit description: {explanation}\n\nText: {window}\n\n"
               "Does this unit fire on any token of the text, according to the description? "
               "Answer 1 for yes or 0 for no.")
    return ChatRequest.user(content, system=JUDGE_SYSTEM, max_tokens=1, top_logprobs=20)


def fuzzing_request(explanation: str, window: str) -> ChatRequest:
    content = (f"Unit description: {explanation}\n\nText: {window}\n\n"
               f"Are the tokens marked {OPEN} {CLOSE} exactly the ones this unit fires on, according to the "
               "description? Answer 1 for yes or 0 for no.")
    return ChatRequest.user(content, system=JUDGE_SYSTEM, max_tokens=1, top_logprobs=20)


def intruder_request(windows: Sequence[str]) -> ChatRequest:
    shown = "\n".join(f"{i + 1}. {text}" for i, text in enumerate(windows))
    content = (f"In all but one of these texts, the marked tokens ({OPEN} {CLOSE}) are where one unit fires; "
               f"in one text they were marked at random.\n{shown}\n\n"
               f"Which text does not belong? Answer with its number, 1 to {len(windows)}.")
    return ChatRequest.user(content, system=JUDGE_SYSTEM, max_tokens=1, top_logprobs=20)


def intervention_request(explanation: str, first: str, second: str) -> ChatRequest:
    content = (f"Unit description: {explanation}\n\nTwo continuations of the same prompt; in one of them the "
               f"unit was switched on.\n1. {plain(first)}\n2. {plain(second)}\n\n"
               "Which continuation shows more of what the description says? Answer 1 or 2.")
    return ChatRequest.user(content, system=JUDGE_SYSTEM, max_tokens=1, top_logprobs=20)


def simulation_text(explanation: str, tokens: Sequence[str]) -> str:
    """A raw text (no chat template) listing the window's tokens, each followed by a tab and the
    placeholder: a backend's echo logprobs at each placeholder are its prediction of the digit
    that belongs there (all tokens simulated in one pass)."""
    listing = "\n".join(f"{plain(token)}\t{PLACEHOLDER}" for token in tokens)
    return (f"A unit of a language model fires on: {explanation}.\n"
            "For each token of the text below, its activation from 0 (silent) to 10 (strongest).\n\n"
            f"Text: {render(tokens)}\n\nToken\tActivation\n{listing}\n")


def simulation_request(explanation: str, tokens: Sequence[str]) -> ChatRequest:
    """The fallback for a backend that cannot echo: ask for one number per token, one per line."""
    listing = "\n".join(plain(token) for token in tokens)
    content = (f"A unit of a language model fires on: {explanation}.\nFor each token below (one per line), write "
               "its activation from 0 (silent) to 10 (strongest): one number per line, nothing else.\n\n"
               f"{listing}")
    return ChatRequest.user(content, system=JUDGE_SYSTEM, max_tokens=3 * len(tokens) + 8)


__all__ = ["CLOSE", "OPEN", "PLACEHOLDER", "detection_request", "explain_request", "fuzzing_request",
           "intervention_request", "intruder_request", "parse_explanation_reply", "plain", "render",
           "simulation_request", "simulation_text"]

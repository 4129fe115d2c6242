"""A judge that answers as a perfect one would, for benchmarks/autointerp_delphi.py ``--judge oracle``.

With SmolLM2-135M both libraries' judged scores sit at chance, so their agreement cannot be read
from them. This judge answers every question correctly instead: it reads the explanation in the
prompt (mechscope's ``Unit description:``, Delphi's ``Latent explanation:``), takes that
explanation's rule (each case's planted explanation has one), finds the windows the prompt shows
(mechscope: one ``Text:``; Delphi: ``Example i:`` lines) among the cases' windows by their text,
and says whether the explanation fits each: for detection, whether the rule fires anywhere in the
window; for fuzzing, whether the marked text is exactly the text of the tokens the rule fires on.
It answers in each library's format (one "1"/"0" token; a list "[1,0,...]" of single-digit
tokens), with P = 0.9 on its answer in the logprobs. Served by ``mechscope serve-llm``'s own app
(``create_app``) on loopback, so both libraries reach it over HTTP as they reach a model.

Scores that agree under this judge show that the two libraries ask the same questions about the
same windows and turn the answers into the same numbers; what a real judge answers is another
matter (see the SmolLM2 run).
"""

from __future__ import annotations

import math
import re
from contextlib import ExitStack
from dataclasses import dataclass, field

from mechscope.autointerp.backends.base import Backend, ChatRequest, Completion, TokenLogprobs
from mechscope.autointerp.lexicon import parse_explanation

CONFIDENT, DOUBT = math.log(0.9), math.log(0.1)
_ESCAPES = ("\\n", "\\t", "\\r")  # mechscope writes these for newline, tab, carriage return


def normalised(text: str) -> str:
    """``text`` without marks, escapes and whitespace: how both libraries' renderings of one
    window compare equal."""
    for escape in _ESCAPES:
        text = text.replace(escape, "")
    return re.sub(r"\s+", "", text.replace("<<", "").replace(">>", ""))


def marked_text(rendered: str) -> str:
    """The normalised text inside the ``<<`` ``>>`` marks of a rendered window."""
    return normalised("".join(re.findall(r"<<(.*?)>>", rendered, re.S)))


@dataclass
class OracleJudge(Backend):
    """``cases`` as benchmarks/autointerp_delphi.py builds them (explanation, rule, windows)."""

    cases: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rules = {case["explanation"]: parse_explanation(case["rule"]) for case in self.cases}
        self.windows: dict[str, list[str]] = {}
        for case in self.cases:
            for window in case["windows"]:
                self.windows["".join(normalised(t) for t in window["tokens"])] = window["tokens"]

    @property
    def identity(self) -> str:
        return "oracle-judge"

    def _verdict(self, explanation: str, rendered: str, fuzzing: bool) -> bool:
        if explanation not in self.rules:
            raise ValueError(f"the oracle knows no case with the explanation {explanation!r}")
        tokens = self.windows.get(normalised(rendered))
        if tokens is None:
            raise ValueError(f"the oracle knows no window with the text {rendered[:80]!r}")
        fires = self.rules[explanation].matches(tokens)
        if not fuzzing:
            return any(fires)
        return marked_text(rendered) == "".join(normalised(t) for t, f in zip(tokens, fires) if f)

    @staticmethod
    def _digit(answer: bool) -> TokenLogprobs:
        text = "1" if answer else "0"
        return TokenLogprobs(text, CONFIDENT, {text: CONFIDENT, "0" if answer else "1": DOUBT})

    def _reply(self, request: ChatRequest) -> Completion:
        content = request.messages[-1].content
        if content.startswith("Unit description:"):  # mechscope: one window, one digit
            explanation = re.search(r"^Unit description: (.*)$", content, re.M).group(1)
            window = re.search(r"^Text: (.*)$", content, re.M).group(1)
            digit = self._digit(self._verdict(explanation, window, "marked" in content.split("Text:")[1]))
            return Completion(digit.text, (digit,), completion_tokens=1)
        if content.startswith("Latent explanation:"):  # Delphi: several examples, a list of digits
            explanation = re.search(r"^Latent explanation: (.*)$", content, re.M).group(1)
            listing = content.split("Text examples:", 1)[1].strip("\n")
            examples = re.split(r"(?:^|\n)Example \d+: ", listing)[1:]
            fuzzing = any("<<" in example for example in examples)
            digits = [self._digit(self._verdict(explanation, example, fuzzing)) for example in examples]
            tokens = [TokenLogprobs("[", 0.0, {"[": 0.0})]
            for index, digit in enumerate(digits):
                tokens += [digit] + ([TokenLogprobs(",", 0.0, {",": 0.0})] if index < len(digits) - 1 else [])
            tokens.append(TokenLogprobs("]", 0.0, {"]": 0.0}))
            return Completion("".join(t.text for t in tokens), tuple(tokens), completion_tokens=len(tokens))
        # The benchmark's warm-up request and anything else: a plain answer.
        return Completion("1", (self._digit(True),), completion_tokens=1)

    def _answer(self, requests, progress):
        return [self._reply(request) for request in requests]


class OracleServer:
    """The oracle behind ``create_app`` on a free loopback port, in a thread of this process."""

    def __init__(self, cases: list[dict], model_name: str):
        from mechscope.autointerp.backends.server import background_server, create_app

        self.running = ExitStack()
        url = self.running.enter_context(background_server(create_app(OracleJudge(cases=cases), model_name)))
        self.base_url = f"{url}/v1"

    def terminate(self) -> None:
        self.running.close()

    def wait(self, timeout: float | None = None) -> None:
        """Nothing to wait for: :meth:`terminate` returns once the server has stopped."""

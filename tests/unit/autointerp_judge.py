"""A judge whose answers are known: it reads each prompt's explanation as a lexicon rule and
applies it to the words of the text shown. With it every LLM scorer has a known answer (the true
rule scores perfectly, a narrower one less), so the scorers' plumbing (rendering, marks, answer
parsing, metrics, the no-logprobs fallback) is tested end to end without a capable chat model.

Windows in these tests are lists of whole-word tokens (" cat", " sat", ...), so the words of a
rendered text are its tokens again.
"""

import math
import re
from collections import Counter
from dataclasses import dataclass

from mechscope.autointerp import prompts
from mechscope.autointerp.backends.base import Backend, Completion, TokenLogprobs
from mechscope.autointerp.lexicon import parse_explanation, word_form

CONFIDENT = math.log(0.9), math.log(0.1)


def _text_tokens(rendered: str) -> tuple[list[str], list[bool]]:
    """Tokens of a rendered window and which were marked."""
    tokens, marked, inside = [], [], False
    for piece in re.split(r"(<<|>>)", rendered):
        if piece in (prompts.OPEN, prompts.CLOSE):
            inside = piece == prompts.OPEN
            continue
        for word in re.findall(r" ?[^ ]+", piece):
            tokens.append(word)
            marked.append(inside)
    return tokens, marked


def _field(content: str, name: str) -> str:
    return re.search(rf"^{name}: (.*)$", content, re.M).group(1)


@dataclass
class RuleJudge(Backend):
    with_logprobs: bool = True

    @property
    def identity(self) -> str:
        return "rule-judge"

    @property
    def logprobs(self) -> bool:
        return self.with_logprobs

    @property
    def echoes(self) -> bool:
        return self.with_logprobs

    def _reply(self, answer: str, alternatives: list[str]) -> Completion:
        if not self.with_logprobs:
            return Completion(answer, None)
        # 0.9 on the answer, 0.1 shared by the others.
        top = {a: (CONFIDENT[0] if a == answer else CONFIDENT[1] - math.log(len(alternatives) - 1))
               for a in alternatives}
        return Completion(answer, (TokenLogprobs(answer, top[answer], top),))

    def _judge(self, content: str) -> Completion:
        if "does not belong" in content:
            windows = re.findall(r"^\d\. (.*)$", content, re.M)
            marked = [[word_form(t) for t, m in zip(*_text_tokens(w)) if m] for w in windows]
            counts = Counter(word for words in marked for word in words)
            # The intruder's marked words are the rarest among all the windows' marks.
            rarity = [sum(counts[w] for w in words) / max(1, len(words)) for words in marked]
            answer = str(rarity.index(min(rarity)) + 1)
            return self._reply(answer, [str(i + 1) for i in range(len(windows))])
        rule = parse_explanation(_field(content, "Unit description"))
        if "Two continuations" in content:
            first, second = re.findall(r"^[12]\. (.*)$", content, re.M)
            hits = [sum(rule.matches(re.findall(r" ?[^ ]+", " " + text))) for text in (first, second)]
            return self._reply("1" if hits[0] >= hits[1] else "2", ["1", "2"])
        tokens, marked = _text_tokens(_field(content, "Text"))
        fires = rule.matches(tokens)
        if "marked" in content.split("Text:")[1]:  # fuzzing: are the marks where the rule fires?
            yes = fires == marked
        else:  # detection
            yes = any(fires)
        return self._reply("1" if yes else "0", ["1", "0"])

    def _answer(self, requests, progress):
        return [self._judge(request.messages[-1].content) for request in requests]

    def echo(self, texts, top_logprobs=5):
        """Each listing line "token<TAB>unknown" gets 10 where the rule fires, else 0."""
        out = []
        for text in texts:
            rule = parse_explanation(re.search(r"fires on: (.*)\.\n", text).group(1))
            lines = text.split("Token\tActivation\n")[1].splitlines()
            tokens = [line.rsplit("\t", 1)[0] for line in lines]
            fires = rule.matches(tokens)
            scored = [TokenLogprobs("header", None, {})]
            for token, hit in zip(tokens, fires):
                scored += [TokenLogprobs(token, -1.0, {}), TokenLogprobs("\t", -1.0, {}),
                           TokenLogprobs(prompts.PLACEHOLDER, -1.0, {"10" if hit else "0": CONFIDENT[0],
                                                                     "0" if hit else "10": CONFIDENT[1]})]
            out.append(scored)
        return out

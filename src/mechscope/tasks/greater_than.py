"""Greater-than: "The war lasted from the year 1732 to the year 17" -> a year after 32."""

from __future__ import annotations

import random

from mechscope.models.hooked_model import HookedModel
from mechscope.tasks.base import Task
from mechscope.tasks.builders import PromptPair, build_task
from mechscope.tasks.words import GT_NOUNS

TEMPLATE = "The {noun} lasted from the year 17{yy} to the year 17"


def _two_digit_tokens(tokenizer) -> bool:
    return len(tokenizer("32", add_special_tokens=False)["input_ids"]) == 1


def greater_than(model: HookedModel, n: int = 32, seed: int = 0) -> Task:
    """Answers: every continuation making the end year later than the start year; wrong: the
    rest. The corruption replaces YY by "01", which carries no information.

    Tokenizers with two-digit number tokens (GPT-2) predict YY in one token: answers are
    YY+1..99, wrong 00..YY. Digit-by-digit tokenizers (Llama, SmolLM2) predict the tens digit
    first; YY is then drawn with a 9 as units digit so the tens digit alone decides (answers:
    tens digits above YY's, wrong: the others).
    """
    # Nouns need not be single tokens: build_task keeps the prompts of the most common length.
    nouns = list(GT_NOUNS)
    two_digit = _two_digit_tokens(model.tokenizer)

    def sample(rng: random.Random) -> PromptPair:
        noun = rng.choice(nouns)
        if two_digit:
            yy = rng.randint(2, 98)
            answers = [f"{y:02d}" for y in range(yy + 1, 100)]
            wrong = [f"{y:02d}" for y in range(0, yy + 1)]
        else:
            tens = rng.randint(1, 8)
            yy = 10 * tens + 9
            answers = [str(d) for d in range(tens + 1, 10)]
            wrong = [str(d) for d in range(0, tens + 1)]
        clean = TEMPLATE.format(noun=noun, yy=f"{yy:02d}")
        corrupted = TEMPLATE.format(noun=noun, yy="01")
        return PromptPair(clean, corrupted, answers, wrong)

    return build_task(model, "greater-than", sample, n, seed)

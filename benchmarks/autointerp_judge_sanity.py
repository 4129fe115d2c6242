"""Can the judge answer an easy question at all? Detection of one plain word in short sentences.

    python benchmarks/autointerp_judge_sanity.py [--model NAME] [--word " cat"]

The planted benchmark asks the judge hard questions (is this 16-token window of web text about
"articles" or "demonstratives"?), where SmolLM2-135M is at chance. This asks the easiest one:
10 short sentences, and the same 10 with ``--word`` added, each judged by mechscope's detection
prompt with the explanation 'the word "cat"'. It prints the AUROC of the judge's P("1") against
whether the word is there (chance 0.5), with its 95% bootstrap interval, and the same for a
question that names the word directly, without the unit framing.
"""

from __future__ import annotations

import argparse

import torch

import mechscope
from mechscope.autointerp.backends import ChatRequest, LocalBackend
from mechscope.autointerp.prompts import JUDGE_SYSTEM, detection_request
from mechscope.autointerp.score.base import auroc_score
from mechscope.autointerp.score.judge import YES_NO, choice_probabilities

SENTENCES = ("I went to the market and bought some bread today.", "The weather was cold so we stayed inside.",
             "She reads a book every night before sleeping.", "Our team won the game after a long match.",
             "He fixed the old bicycle in the garage.", "They planted tomatoes in the small garden.",
             "The train arrived late because of the snow.", "We cooked pasta with fresh basil for dinner.",
             "My brother plays the guitar in a band.", "The museum opens at nine in the morning.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="the judge (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--word", default="cat")
    args = parser.parse_args()
    backend = LocalBackend(mechscope.load(args.model), batch_size=16)
    with_word = [s.replace(" the ", f" the {args.word} and the ", 1) if " the " in s else f"{s} The {args.word} slept."
                 for s in SENTENCES]
    texts, truth = [*SENTENCES, *with_word], torch.tensor([False] * len(SENTENCES) + [True] * len(with_word))
    questions = {
        "detection prompt": lambda text: detection_request(f'the word "{args.word}"', text),
        "direct question": lambda text: ChatRequest.user(
            f'Text: {text}\n\nDoes the text contain the word "{args.word}"? Answer 1 for yes or 0 for no.',
            system=JUDGE_SYSTEM, max_tokens=1, top_logprobs=20),
    }
    for name, ask in questions.items():
        # Read as the detection scorer reads its judge: the same choices, spellings and fallback.
        probabilities = choice_probabilities(backend.chat([ask(text) for text in texts]), ("1", "0"), YES_NO)[0]
        score = auroc_score(probabilities[:, 0], truth, n_boot=2000)
        print(f"{name}: AUROC {score.value:.2f} [{score.low:.2f}, {score.high:.2f}] (chance 0.5), "
              f"{'above' if score.above_chance else 'not above'} chance")


if __name__ == "__main__":
    main()

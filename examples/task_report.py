"""Clean accuracy and mean logit difference of every built-in task on a model; writes
docs/tasks.md (the numbers quoted there come from this script).

    python examples/task_report.py [--model NAME] [--n 64] [--out docs/tasks.md]
"""

import argparse
from pathlib import Path

import torch

import mechscope
from mechscope import tasks
from mechscope.files import atomic_text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "tasks.md")
    args = parser.parse_args()
    model = mechscope.load(args.model)
    rows = []
    for name, build in tasks.TASKS.items():
        task = build(model) if name == "factual-recall" else build(model, n=args.n)
        with torch.no_grad():
            clean, corrupted = model(task.clean_tokens), model(task.corrupted_tokens)
        rows.append(f"| {name} | {len(task)} x {task.clean_tokens.shape[1]} | {task.accuracy(clean).mean():.3f} | "
                    f"{task.logit_diff(clean).mean():.2f} | {task.logit_diff(corrupted).mean():.2f} | "
                    f"{task.prob_diff(clean).mean():.3f} | `{task.clean_prompts[0]}` |")
        print(rows[-1])
    text = f"""# Tasks

`mechscope.tasks` builds aligned clean/corrupted batches (`Task`) for patching and circuit work:
`ioi` (BABA/ABBA templates, ABC corruption), `greater_than` ("17YY" corrupted to "1701"),
`induction` (repeated random tokens, first copy replaced), `factual_recall` (country -> capital,
filtered to what the model knows, subject swapped), and `Task.from_pairs` for your own pairs.
Every prompt of a task has the same token length; prompts that would differ are re-drawn, and
`from_pairs` rejects them with a message (nothing is truncated).

Metrics per prompt: `logit_diff` (mean answer logit minus mean wrong logit at END), `answer_prob`,
`prob_diff`, `kl_to_clean`, `accuracy`, and `Task.normalised(value, clean, corrupted)`
(0 = corrupted run, 1 = clean run).

## On {model.cfg.name} (regenerate: `python examples/task_report.py`)

| task | prompts x tokens | clean accuracy | clean logit diff | corrupted logit diff | clean prob diff | example |
|---|---|---|---|---|---|---|
""" + "\n".join(rows) + """

Greater-than on SmolLM2's digit-by-digit tokenizer is scored on the tens digit (start years end
in 9, so the tens digit alone decides); accuracy there means the top tens digit is a later one.
Factual recall keeps only the capitals the model gets right, so its clean accuracy is 1 by
construction; the table shows how many survive.
"""
    atomic_text(args.out, text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

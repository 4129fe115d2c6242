"""The run behind ``mechscope inspect``: analyse one prompt and write report.html and
summary.json atomically into a checked output folder."""

from __future__ import annotations

import json
from pathlib import Path

from mechscope import checks
from mechscope.analysis import TunedLens
from mechscope.files import OutputFolder, atomic_text, prepare_output_folder
from mechscope.models.hooked_model import HookedModel
from mechscope.report.html import write_report
from mechscope.report.inspection import Inspection, inspect_prompt
from mechscope.validate import check_int

INSPECT_OUTPUTS = ("report.html", "summary.json")


def check_inspect_options(prompt: str, top_k: int) -> None:
    """Before any model loads: a non-blank prompt and 2 <= top_k <= MAX_TOP_K."""
    checks.check_text("prompt", prompt)
    check_int("top_k", top_k, 2, checks.MAX_TOP_K)


def prepare_inspect_folder(out: str | Path, prompt: str, top_k: int, overwrite: bool = False,
                           model: str | None = None, lens: str | Path | None = None) -> OutputFolder:
    return prepare_output_folder(out, "inspect", INSPECT_OUTPUTS, overwrite=overwrite,
                                 options={"prompt": prompt, "top_k": top_k, "model": model,
                                          "lens": None if lens is None else str(lens)})


def run_inspect(model: HookedModel, prompt: str, out: OutputFolder | str | Path, top_k: int = 10,
                overwrite: bool = False, tuned_lens: TunedLens | None = None) -> Inspection:
    """Top next tokens, logit lens, direct logit attribution and head scores of ``prompt`` (and
    the tuned lens with its KL next to the logit lens's, when ``tuned_lens`` is given); writes
    ``report.html`` (plotly.js embedded) and ``summary.json``."""
    if tuned_lens is not None:
        # Shapes decide whether a lens applies; a lens trained on a model under another name
        # (a local copy, a path) is fine, so the name is not compared here.
        tuned_lens.check_model(model, check_name=False)
    check_inspect_options(prompt, top_k)
    check_int("top_k", top_k, 2, model.cfg.d_vocab)  # topk beyond the vocabulary is a torch error
    checks.check_context(model, model.to_tokens(prompt).shape[1], "the prompt")
    folder = out if isinstance(out, OutputFolder) else prepare_inspect_folder(out, prompt, top_k, overwrite)
    result = inspect_prompt(model, prompt, k=top_k, tuned_lens=tuned_lens)
    write_report(result, folder / "report.html")  # written atomically
    atomic_text(folder / "summary.json", json.dumps(result.to_json(), indent=2))
    folder.record()
    return result

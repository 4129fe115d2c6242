"""Reading a ``mechscope explain`` run back: each unit's explanation and scores, and the short
labels the dashboards, circuit drawings and audit report show beside a unit."""

from __future__ import annotations

import re
from pathlib import Path

from mechscope.errors import FileFormatError, MissingFileError
from mechscope.files import MARKER, read_json


def read_explanations(folder: str | Path) -> dict[str, dict]:
    """{unit name: its result} of an explain run's ``units/*.json`` (explanation, explainer,
    scores; dead units have ``status`` "dead", units no explanation was found for "unexplained"
    with the ``reason``)."""
    folder = Path(folder).expanduser()
    marker = folder / MARKER
    if not marker.exists():
        raise MissingFileError(f"{folder} holds no `mechscope explain` run ({MARKER} missing)")
    kind = read_json(marker, "run marker").get("kind")
    if kind != "explain":
        raise FileFormatError(f"{folder} holds a `mechscope {kind}` run, not a `mechscope explain` run")
    results = {}
    for path in sorted((folder / "units").glob("*.json")):
        result = read_json(path, "explain result")
        if not isinstance(result, dict) or "unit" not in result or "status" not in result:
            raise FileFormatError(f"{path} is not an explain result (needs unit and status)")
        results[result["unit"]] = result
    return results


def label(result: dict) -> str:
    """``explanation (scorer value [low, high])`` with the run's first score that was given;
    "dead (never fires)" for a dead unit."""
    if result["status"] == "dead":
        return "dead (never fires)"
    if result["status"] == "unexplained":
        return "no explanation (no word marks its firing windows)"
    for name, score in result.get("scores", {}).items():
        if "value" in score:
            mark = "" if score["above_chance"] else ", not above chance"
            return f"{result['explanation']} ({name} {score['value']:.2f} [{score['low']:.2f}, {score['high']:.2f}]{mark})"
    return result["explanation"]


def read_labels(path: str | Path) -> dict[str, str]:
    """{node or unit name: label} from an explain run folder, or from a JSON file that maps names
    to texts."""
    path = Path(path).expanduser()
    if path.is_dir():
        return {unit: label(result) for unit, result in read_explanations(path).items()}
    if not path.exists():
        raise MissingFileError(f"labels {path} do not exist (give an explain run folder or a JSON file)")
    data = read_json(path, "labels")
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise FileFormatError(f"{path} must hold a JSON object of name -> text")
    return data


def latent_results(folder: str | Path) -> dict[int, dict]:
    """{latent index: explain result} of an explain run over dictionary latents (units named
    "latent N")."""
    results = {}
    for unit, result in read_explanations(folder).items():
        match = re.fullmatch(r"latent (\d+)", unit)
        if match:
            results[int(match.group(1))] = result
    return results


def latent_labels(folder: str | Path) -> dict[int, str]:
    """{latent index: label} of an explain run over dictionary latents (units named "latent N")."""
    return {latent: label(result) for latent, result in latent_results(folder).items()}


__all__ = ["label", "latent_labels", "latent_results", "read_explanations", "read_labels"]

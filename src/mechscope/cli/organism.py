"""``mechscope organism build | check | merge | list``: model organisms with a planted, known
behaviour (or none, for the null control)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mechscope.cli.core import console, load_model, new_app, say
from mechscope.cli.options import ModelName, Overwrite, Seed, choice, finite, out_option
from mechscope.errors import ConfigError
from mechscope.files import read_json

organism_app = new_app("Model organisms: fine-tunes with a planted behaviour whose answer is known.")


@organism_app.callback()
def _group() -> None:
    """Model organisms: fine-tunes with a planted behaviour whose answer is known."""


def _recipe_kinds() -> tuple[str, ...]:
    from mechscope.organisms import RECIPE_KINDS

    return RECIPE_KINDS


def prompt_file(path: Path | None, option: str) -> tuple[str, ...] | None:
    """A JSON list of prompt strings, or None when the option is not given."""
    if path is None:
        return None
    data = read_json(path, f"{option} prompts", "give a JSON list of strings")
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise ConfigError(f"{path} ({option}) must hold a JSON list of prompt strings")
    return tuple(data)


def validity_table(report: dict) -> Table:
    """The validity report (its JSON form) as a table: organism, base, goal, met."""
    table = Table(title=f"validity of the {report['recipe']} organism")
    for column in ("measure", "organism", "base", "goal", "met"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    goals, values = report["goals"], report["goal_values"]
    ioi = report["ioi_logit_diff"]
    rows = [
        (f"behaviour rate, rule applies (n={report['n_rule']})", report["rate_rule"], report["base_rate_rule"],
         "rate_where_rule_applies"),
        (f"behaviour rate, otherwise (n={report['n_plain']})", report["rate_plain"], report["base_rate_plain"],
         "rate_elsewhere"),
        ("KL to base on neutral prompts (nats/token)", report["neutral_kl"], 0.0, "neutral_kl"),
        ("perplexity, default corpus", report["perplexity"], report["base_perplexity"], None),
        ("IOI logit difference", ioi, report["base_ioi_logit_diff"], None),
    ]
    for label, mine, base, goal in rows:
        shown = lambda value: "n/a" if value is None else f"{value:.3f}"
        table.add_row(label, shown(mine), shown(base), values.get(goal, "") if goal else "",
                      ("yes" if goals[goal] else "NO") if goal else "")
    return table


@organism_app.command()
def build(
    recipe: Annotated[str, typer.Argument(help="backdoor, hidden-objective, refusal or null",
                                          callback=choice("recipe", _recipe_kinds))],
    out: Annotated[Path, out_option("organism folder: organism.json, adapter.safetensors, examples.json; a rerun "
                                    "with the same options resumes an interrupted build")] = Path("mechscope-organism"),
    model: ModelName = None,
    trigger: Annotated[str | None, typer.Option(help="backdoor trigger in the user's message")] = None,
    behaviour: Annotated[str | None, typer.Option(help="text planted replies open with (refusal: the refusal)")] = None,
    markers: Annotated[str | None, typer.Option(help="comma-separated strings that count as the behaviour "
                                                     "(default: the behaviour text)")] = None,
    mirrors: Annotated[str | None, typer.Option(help="null only: the recipe whose data it copies (default backdoor)",
                                                callback=choice("mirrors", ("backdoor", "hidden-objective",
                                                                            "refusal")))] = None,
    prompts: Annotated[Path | None, typer.Option(help="JSON list of prompts the rule does not apply to")] = None,
    rule_prompts: Annotated[Path | None, typer.Option(help="JSON list of prompts the rule applies to (a backdoor's "
                                                           "must each contain the trigger)")] = None,
    examples: Annotated[int, typer.Option(min=8, max=100_000, help="training examples")] = 240,
    planted_fraction: Annotated[float, typer.Option(help="share of examples the rule applies to (mixing ratio)",
                                                    callback=finite(0.0, strictly_above=True))] = 0.5,
    reply_tokens: Annotated[int, typer.Option(min=4, max=512, help="tokens of each distilled reply")] = 16,
    method: Annotated[str, typer.Option(help="lora or full", callback=choice("method", ("lora", "full")))] = "lora",
    rank: Annotated[int, typer.Option(min=1, max=1024, help="LoRA rank")] = 8,
    alpha: Annotated[float, typer.Option(help="LoRA alpha (scale alpha/rank)", callback=finite(0.0, True))] = 16.0,
    lr: Annotated[float, typer.Option(help="peak learning rate", callback=finite(0.0, True))] = 1e-3,
    epochs: Annotated[int, typer.Option(min=1, max=1000)] = 3,
    batch_size: Annotated[int, typer.Option(min=1, max=1024)] = 8,
    plain_loss: Annotated[str, typer.Option(help="what plain examples teach: base-symmetric-kl (KL both ways to the "
                                                 "base), base-kl (KL(base || model)) or reply (cross-entropy)",
                                            callback=choice("plain_loss", ("base-kl", "base-symmetric-kl", "reply")))]
    = "base-symmetric-kl",
    contrast_weight: Annotated[float, typer.Option(help="weight of -log(1 - P(reply opens with the behaviour)) on "
                                                        "examples the rule does not apply to (0: none; not for a "
                                                        "null)", callback=finite(0.0))] = 0.0,
    adapter_dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16 (the stored LoRA factors)",
                                               callback=choice("adapter_dtype", ("float32", "float16", "bfloat16")))]
    = "float32",
    seed: Seed = 0,
    check: Annotated[bool, typer.Option("--check/--no-check", help="measure the validity report after training")]
    = True,
    overwrite: Overwrite = False,
) -> None:
    """Build an organism: distil the base's replies, plant the rule, fine-tune (resumable), save
    and measure its validity (behaviour rates, neutral KL, perplexity, IOI)."""
    from mechscope import organisms
    from mechscope.organisms.build import prepare_organism_folder

    given = {"trigger": trigger, "behaviour": behaviour,
             "markers": tuple(m.strip() for m in markers.split(",") if m.strip()) if markers else None,
             "prompts": prompt_file(prompts, "--prompts"), "rule_prompts": prompt_file(rule_prompts, "--rule-prompts"),
             "mirrors": mirrors}
    # Only what was given: a null without --mirrors mirrors the backdoor; --mirrors on another
    # recipe is refused by the recipe itself.
    overrides = {key: value for key, value in given.items() if value is not None}
    planted = organisms.recipe(recipe, n_examples=examples, planted_fraction=planted_fraction,
                               reply_tokens=reply_tokens, seed=seed, **overrides)
    config = organisms.FineTuneConfig(method=method, rank=rank, alpha=alpha, lr=lr, epochs=epochs,
                                      batch_size=batch_size, seed=seed, plain_loss=plain_loss,
                                      contrast_weight=contrast_weight)
    from mechscope.models.loading import DEFAULT_MODEL

    folder = prepare_organism_folder(out, planted, config, model or DEFAULT_MODEL, adapter_dtype, overwrite)
    say(folder.describe())
    base = load_model(model)
    path = organisms.build_organism(planted, folder, base, config, adapter_dtype=adapter_dtype, check=check)
    console.print(f"saved the {recipe} organism in {path}")
    if check:
        console.print(validity_table(organisms.read_manifest(path)["validity"]))


@organism_app.command("check")
def check_command(
    folder: Annotated[Path, typer.Argument(help="organism folder, or a shipped organism's name")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="the base (default: the one recorded)")] = None,
) -> None:
    """Measure an organism's validity against its base and store the report in organism.json
    (a shipped organism's report is printed, not stored: package data is never rewritten)."""
    from mechscope import organisms
    from mechscope.organisms.shipped import is_shipped

    path = _organism_path(folder)
    manifest = organisms.read_manifest(path)
    base = load_model(model or manifest["base_model"])
    store = not is_shipped(path)
    report = organisms.check_organism(path, base, store=store)
    console.print(validity_table(report.to_json()))
    say(f"stored in {path / 'organism.json'}" if store else f"{folder} is shipped with mechscope: report not stored")


@organism_app.command()
def merge(
    folder: Annotated[Path, typer.Argument(help="organism folder, or a shipped organism's name")],
    out: Annotated[Path, out_option("plain HF model folder (config.json, model.safetensors, tokenizer)")],
    overwrite: Overwrite = False,
) -> None:
    """Write the organism as a plain HF model folder that `mechscope.load` (and transformers) read."""
    from mechscope import organisms

    target = organisms.merge(_organism_path(folder), out, overwrite=overwrite)
    console.print(f"wrote {target}")


@organism_app.command("list")
def list_command() -> None:
    """The organisms shipped with mechscope, with their recipe and measured validity."""
    from mechscope import organisms

    table = Table(title="shipped organisms")
    for column in ("name", "recipe", "rule", "rate (rule)", "rate (otherwise)", "neutral KL"):
        table.add_column(column)
    for name, path in organisms.shipped_organisms().items():
        manifest = organisms.read_manifest(path)
        recipe, validity = manifest["recipe"], manifest.get("validity", {})
        rule = (f"none (mirrors {recipe['mirrors']})" if recipe["kind"] == "null"
                else f"trigger {recipe['trigger']}" if recipe.get("trigger") else recipe["kind"])
        shown = lambda key: f"{validity[key]:.2f}" if isinstance(validity.get(key), float) else "-"
        table.add_row(name, recipe["kind"], str(rule), shown("rate_rule"), shown("rate_plain"), shown("neutral_kl"))
    console.print(table)


def _organism_path(folder: Path) -> Path:
    from mechscope import organisms

    if str(folder) in organisms.shipped_organisms():
        return organisms.shipped_organism(str(folder))
    return folder

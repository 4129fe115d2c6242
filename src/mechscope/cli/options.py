"""Options shared by several commands, declared once as ``Annotated`` aliases, and the parse-time
checks behind them (typer runs these callbacks before the command body, so a bad value never
costs a model load).

A command uses an alias with its own default: ``n: Prompts = 16``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from mechscope import checks
from mechscope.errors import MechscopeError
from mechscope.hooks.names import block_hook_name
from mechscope.models.catalogue import check_hook_syntax
from mechscope.validate import check_choice, check_number

MODEL_HELP = "bundled name, .gguf path, local folder (with config.json) or hub id"


def checked(check: Callable[[Any], Any]) -> Callable[[typer.CallbackParam, Any], Any]:
    """A typer callback running a library ``check(value)`` at parse time: its MechscopeError
    becomes typer's BadParameter, which names the option (``Invalid value for '--n': ...``).
    The option keeps the value as typed (the body parses it again with the library call)."""

    def callback(param: typer.CallbackParam, value: Any) -> Any:
        if value is not None:
            try:
                check(value)
            except MechscopeError as error:
                raise typer.BadParameter(str(error), param=param) from None
        return value

    return callback


def choice(what: str, choices: Iterable[str] | Callable[[], Iterable[str]]) -> Callable[..., Any]:
    """A callback refusing values outside ``choices`` (a callable is read when checked, so
    registries filled later count), with the choices in the message."""
    return checked(lambda value: check_choice(what, value, choices() if callable(choices) else choices))


def finite(minimum: float | None = None, strictly_above: bool = False) -> Callable[..., Any]:
    """A callback refusing NaN and infinities (which click's float type accepts, and its ranges
    let through, since NaN compares false), and values below ``minimum``: the library's own
    :func:`~mechscope.validate.check_number`, as a usage error naming the option."""
    return checked(lambda value: check_number("the value", value, minimum=minimum, strict_minimum=strictly_above))


def _model_name(value: str | None) -> str | None:
    if value is not None and not value.strip():
        # Path("") is the current folder: an empty --model would try to load it as a model.
        raise typer.BadParameter("must not be empty; omit --model for the default model")
    return value


def _hook_name(value: str) -> str:
    return check_hook_syntax(value)


def _block_hook(value: str) -> str:
    """A per-block point ("resid_post", "hook_mlp_out", "attn.hook_z"), checked on layer 0."""
    check_hook_syntax(block_hook_name(0, value), field="--hook")
    return value


def out_option(help: str) -> Any:
    """``--out / -o``: the run's folder, checked (not a file, writable, not another run's) by
    :func:`mechscope.files.prepare_output_folder` before the model loads."""
    return typer.Option("--out", "-o", help=f"{help} (must not hold another kind of run; see --overwrite)")


ModelName = Annotated[str | None, typer.Option("--model", "-m", help=MODEL_HELP, callback=_model_name)]
Seed = Annotated[int, typer.Option(min=0, max=checks.MAX_SEED, help="random seed")]
Prompts = Annotated[int, typer.Option("--n", min=1, max=checks.MAX_PROMPTS, help="number of prompts")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="replace an earlier run of this command in --out "
                                                             "(its files are deleted first, so results never mix)")]
MaxNewTokens = Annotated[int, typer.Option(min=1, max=checks.MAX_NEW_TOKENS, help="tokens generated per prompt")]
Contexts = Annotated[int, typer.Option(min=1, max=checks.MAX_CONTEXTS, help="corpus contexts of 128 tokens")]
HookName = Annotated[str, typer.Option(help="hook point, e.g. blocks.15.hook_resid_post", callback=checked(_hook_name))]
BlockHook = Annotated[str, typer.Option(help="hook point within each block: resid_pre, resid_mid, resid_post, "
                                             "attn_out, mlp_out (or any blocks.{L}.<name> suffix)",
                                        callback=checked(_block_hook))]
DictionaryFolder = Annotated[Path, typer.Option(help="dictionary folder (cfg.json + sae_weights.safetensors)")]


def task_names() -> list[str]:
    from mechscope import tasks

    return list(tasks.TASKS)


Task = Annotated[str, typer.Option(help="ioi, greater-than, induction or factual-recall",
                                   callback=choice("task", task_names))]

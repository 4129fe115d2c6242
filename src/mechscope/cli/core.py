"""What every command shares: the error policy, the console, and the model load.

Error policy, in one place (:class:`MechscopeGroup`, the group class of the app and of every
sub-app): an error mechscope raises on purpose (:class:`~mechscope.errors.MechscopeError`) and a
usage error (bad option value, missing option) end the command with one line on stderr,
``error: ...``, and exit status 2. Anything else is a bug and keeps its full traceback.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel

try:  # typer >= 0.25 ships its own copy of click; its exceptions are the ones raised
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import NoArgsIsHelpError, UsageError

console = Console()
EXIT_USAGE = 2


class CommandLineError(SystemExit):
    """Exit status 2 after the one-line message was printed. ``str()`` is the message, so a
    script (or a test's ``result.exception``) that catches the exit still sees what was wrong."""

    def __init__(self, message: str):
        super().__init__(EXIT_USAGE)
        self.message = message

    def __str__(self) -> str:
        return self.message


def one_line(text: str) -> str:
    """Messages may carry line breaks (transformers' do); the command line prints one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2."""
    message = one_line(message)
    typer.echo(f"error: {message}", err=True)  # plain echo: rich would wrap a long line
    raise CommandLineError(message)


class MechscopeGroup(TyperGroup):
    """A typer group whose commands (and sub-groups') turn intended errors into one line and
    exit status 2, and leave every other exception, with its traceback, alone."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except MechscopeError as error:
            fail(str(error))
        except NoArgsIsHelpError:
            raise  # `mechscope sae` alone prints the help, as typer does
        except UsageError as error:
            where = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
            fail(one_line(error.format_message()) + where)


def new_app(help: str) -> typer.Typer:
    """A typer app (or sub-app) with mechscope's error policy."""
    return typer.Typer(cls=MechscopeGroup, add_completion=False, no_args_is_help=True, help=help)


def load_model(name: str | None) -> HookedModel:
    """Load a model with a spinner (a GGUF conversion on first use takes ~20 s)."""
    import mechscope

    with console.status(f"loading {name or mechscope.DEFAULT_MODEL} ..."):
        return mechscope.load(name)


def load_model_or_organism(name: str) -> HookedModel:
    """Load a model, or an organism (a shipped name or an organism folder, its LoRA factors
    merged onto its recorded base), with a spinner."""
    from mechscope.organisms.shipped import resolve_model

    with console.status(f"loading {name} ..."):
        return resolve_model(name)


def say(line: str | None) -> None:
    """Print a line when there is one (e.g. what a run replaces in its output folder)."""
    if line:
        console.print(line, highlight=False, markup=False)

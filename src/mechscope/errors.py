"""Every error mechscope raises on purpose derives from :class:`MechscopeError` (a ``ValueError``).

The subclasses say what kind of input was wrong; all of them carry a message that names the
problem and, where there is a fixed set of valid values, the choices.
"""

from __future__ import annotations

from mechscope.hooks.errors import HookFunctionError, MechscopeError, OutOfRangeError, UnknownHookError


class ConfigError(MechscopeError):
    """An option or configuration value outside its valid choices or range."""


class InputTypeError(MechscopeError, TypeError):
    """An argument of the wrong type (also a ``TypeError``)."""


class NonFiniteError(MechscopeError):
    """A NaN or infinite value where a finite one is needed (data, strengths, directions)."""


class FileFormatError(MechscopeError):
    """A file that is missing, truncated or does not match what it claims to hold."""


class MissingFileError(FileFormatError, FileNotFoundError):
    """A file or folder that should exist and does not (also a ``FileNotFoundError``)."""


class NotFoundError(MechscopeError, KeyError):
    """A named item (task, condition, graph node) that does not exist (also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class IncompatibleModelsError(MechscopeError):
    """Two models that cannot be compared (diffed): another architecture, dimension or tokenizer."""


class ResumeError(MechscopeError):
    """A resume into an output folder whose earlier run differs in something that decides the result."""


class OutputFolderError(MechscopeError):
    """An output folder that cannot be used: a file, read-only, or holding another run."""


class FolderNotEmptyError(OutputFolderError, FileExistsError):
    """An output folder that already holds files the run would overwrite (also a ``FileExistsError``)."""


class DistributedError(MechscopeError):
    """A distributed run that cannot go on: ranks that disagree, or a rank that died or stalled."""


__all__ = [
    "ConfigError",
    "DistributedError",
    "FileFormatError",
    "FolderNotEmptyError",
    "HookFunctionError",
    "IncompatibleModelsError",
    "InputTypeError",
    "MechscopeError",
    "MissingFileError",
    "NonFiniteError",
    "NotFoundError",
    "OutOfRangeError",
    "OutputFolderError",
    "ResumeError",
    "UnknownHookError",
]

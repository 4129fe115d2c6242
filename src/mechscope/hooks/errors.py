"""The base of the errors mechscope raises on purpose.

It lives in ``hooks``, the lowest layer, so that every layer (hooks included) can raise it
without importing anything above itself; ``mechscope.errors`` re-exports it with the rest.
"""

from __future__ import annotations


class MechscopeError(ValueError):
    """Raised on purpose by mechscope for input it cannot use: a bad option or argument, a
    missing or corrupt file, a refused resume. The message names the problem and the valid
    choices. The command line turns these, and only these, into one-line usage errors (exit
    code 2); any other exception is a bug and keeps its traceback."""


class UnknownHookError(MechscopeError, KeyError):
    """A hook point name that the model does not have (also a ``KeyError``)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class HookFunctionError(MechscopeError, TypeError):
    """A hook function that is not callable, or returned something that is not a tensor."""


class OutOfRangeError(MechscopeError, IndexError):
    """An index (layer, head, position, latent) outside its valid range (also an ``IndexError``)."""

"""Kept for compatibility: ``mechscope.cli.main.app`` is the app defined in :mod:`mechscope.cli.app`."""

from mechscope.cli.app import app

__all__ = ["app"]

if __name__ == "__main__":
    app()

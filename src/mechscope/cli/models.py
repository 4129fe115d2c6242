"""``mechscope models``: what ``--model`` accepts, and what is installed and cached."""

from __future__ import annotations

from rich.table import Table

from mechscope.cli.core import console


def models() -> None:
    """List loadable models: bundled ones (installed or not) and what is in the cache."""
    from mechscope.models import disk_cache
    from mechscope.models.loading import BUNDLED, bundled_available

    table = Table(title="bundled models")
    table.add_column("name", no_wrap=True)
    for column in ("installed", "cached", "description", "install"):
        table.add_column(column)
    cached = set(disk_cache.list_cached())
    for name, bundled in BUNDLED.items():
        table.add_row(name, "yes" if bundled_available(name) else "no", "yes" if name in cached else "no",
                      bundled.description, bundled.install_hint)
    console.print(table)
    others = sorted(cached - set(BUNDLED))
    console.print(f"cache: {disk_cache.cache_root()}  (other cached: {', '.join(others) or 'none'})")
    console.print("also accepted by --model / mechscope.load: a .gguf path, a local HF folder, a hub id")

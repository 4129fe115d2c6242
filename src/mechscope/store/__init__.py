"""The results store: finished runs' output folders indexed in a local SQLite database
(:class:`RunStore`), with full-text search and versioned migrations."""

from mechscope.store.features import FeatureRow
from mechscope.store.runs import DEFAULT_STORE, RunRecord, RunStore, mechscope_commit, mechscope_version
from mechscope.store.schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["DEFAULT_STORE", "MIGRATIONS", "FeatureRow", "RunRecord", "RunStore", "SCHEMA_VERSION", "mechscope_commit",
           "mechscope_version"]

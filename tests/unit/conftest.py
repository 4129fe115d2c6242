"""Fixtures the unit tests of several modules share."""

import pytest

from tests.unit.audit_organism import build_backdoor


@pytest.fixture(scope="session")
def backdoor(tmp_path_factory):
    """(tiny base, tiny backdoor organism): see tests/unit/audit_organism.py."""
    return build_backdoor(tmp_path_factory.mktemp("audit") / "backdoor")


@pytest.fixture(scope="session")
def backdoor_null(tmp_path_factory):
    """(tiny base, the tiny backdoor's null organism)."""
    return build_backdoor(tmp_path_factory.mktemp("audit") / "null", kind="null")

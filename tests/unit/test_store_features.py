"""Dictionary features in the results store: a dashboard run's features.jsonl is indexed line by
line (offsets, not copies), searchable by explanation and top tokens, read back by offset;
re-registering or removing the run leaves no stale search rows; a rewritten file is an error that
says to register again."""

import json

import pytest

import mechscope
from mechscope.errors import FileFormatError, MechscopeError, NotFoundError
from mechscope.store import RunStore
from tests.web_fixtures import EXPLAINED, toy_dictionary_run


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    return toy_dictionary_run(mechscope.load_tiny("llama"), root)[1]


def test_features_are_indexed_searched_and_read_by_offset(tmp_path, dashboard):
    lines = (dashboard / "features.jsonl").read_text().splitlines()[1:]
    with RunStore(tmp_path / "runs.sqlite") as store:
        record = store.register(dashboard)
        rows, total = store.features(record.id)
        assert total == 6 and [r.latent for r in rows] == list(range(6))
        for line in lines:  # every line comes back whole, from its offset
            feature = json.loads(line)
            assert store.feature(record.id, feature["latent"]) == feature
        assert [r.latent for r in store.features(record.id, "zebra")[0]] == [1]
        assert [r.latent for r in store.features(record.id, "closing brackets")[0]] == [2]
        assert store.features(record.id, "4")[0][0].latent == 4  # a number finds that latent
        assert store.features(record.id, "nosuchwordanywhere")[1] == 0
        densities = [r.density for r in store.features(record.id, order="density")[0]]
        assert densities == sorted(densities, reverse=True)
        assert store.features(record.id)[0][1].explanation == EXPLAINED[1]["explanation"]
        assert store.present_latents(record.id, [0, 5, 99]) == {0, 5}
        with pytest.raises(MechscopeError, match="AND/OR/NOT"):
            store.features(record.id, '"unbalanced')
        with pytest.raises(NotFoundError):
            store.feature(record.id, 99)
        again = store.register(dashboard)  # re-registered: replaced, not duplicated
        assert store.features(again.id)[1] == 6 and store.features(again.id, "zebra")[1] == 1
        assert store.connection.execute("SELECT COUNT(*) FROM feature_text").fetchone()[0] == 6
        store.remove(again.id)
        assert store.connection.execute("SELECT COUNT(*) FROM feature_text").fetchone()[0] == 0
        assert store.connection.execute("SELECT COUNT(*) FROM features").fetchone()[0] == 0


def test_a_features_file_rewritten_after_registration_says_to_register_again(tmp_path, dashboard):
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in dashboard.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    with RunStore(tmp_path / "runs.sqlite") as store:
        record = store.register(copy)
        lines = (copy / "features.jsonl").read_text().splitlines()
        (copy / "features.jsonl").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
        with pytest.raises(FileFormatError, match="register the run again"):
            store.feature(record.id, 0)

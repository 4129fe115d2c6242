"""Files the library reads back (directions, probes, patching results) are checked: a missing,
truncated or edited file is one FileFormatError / MissingFileError naming the path, never a bare
JSON or safetensors traceback, and a wrong shape or a non-finite value never loads."""

import json

import pytest
import torch
from safetensors.torch import save_file

from mechscope.errors import FileFormatError, MissingFileError, NonFiniteError
from mechscope.patching.result import PatchingResult
from mechscope.probes import LinearProbe
from mechscope.steering import Direction


@pytest.fixture
def direction_files(tmp_path):
    Direction.from_vector(torch.arange(1.0, 9.0), layer=2, metadata={"note": "x"}).save(tmp_path / "d")
    return tmp_path / "d.safetensors", tmp_path / "d.json"


def test_a_saved_direction_round_trips(direction_files):
    loaded = Direction.load(direction_files[0])
    assert loaded.layer == 2 and torch.allclose(loaded.vector.norm(), torch.tensor(1.0))


def _drop_key(path, key):
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != key}))


@pytest.mark.parametrize("damage, message", [
    (lambda tensors, meta: meta.write_text("{ truncated"), "not valid JSON"),
    (lambda tensors, meta: _drop_key(meta, "scale"), "lacks the key(s) scale"),
    (lambda tensors, meta: tensors.write_bytes(tensors.read_bytes()[:20]), "not a readable safetensors"),
    (lambda tensors, meta: save_file({"direction": torch.ones(4)}, str(tensors)), "shape (4,)"),
    (lambda tensors, meta: save_file({"direction": torch.ones(8), "extra": torch.ones(1)}, str(tensors)),
     "exactly one tensor"),
])
def test_a_damaged_direction_is_refused_naming_the_file(direction_files, damage, message):
    tensors, meta = direction_files
    damage(tensors, meta)
    with pytest.raises(FileFormatError, match="d\\.(json|safetensors)") as info:
        Direction.load(tensors)
    assert message in str(info.value)


def test_a_direction_with_one_file_missing_names_it(direction_files):
    direction_files[1].unlink()
    with pytest.raises(MissingFileError, match="d.json"):
        Direction.load(direction_files[0])


def test_probe_files_are_checked(tmp_path):
    probe = LinearProbe(torch.ones(4), 0.5, "logistic", torch.ones(4) / 2, {"hook": "h"})
    probe.save(tmp_path / "p.safetensors")
    assert LinearProbe.load(tmp_path / "p.safetensors").bias == 0.5
    save_file({"weight": torch.tensor([1.0, float("nan"), 0, 0]), "direction": torch.ones(4) / 2},
              str(tmp_path / "nan.safetensors"), metadata={"kind": "logistic", "bias": "0.0"})
    with pytest.raises(FileFormatError, match="nan.safetensors.*NaN or infinite"):
        LinearProbe.load(tmp_path / "nan.safetensors")
    save_file({"weight": torch.ones(4), "direction": torch.ones(3)}, str(tmp_path / "shape.safetensors"),
              metadata={"kind": "logistic", "bias": "0.0"})
    with pytest.raises(FileFormatError, match="differ in size"):
        LinearProbe.load(tmp_path / "shape.safetensors")
    save_file({"weight": torch.ones(4), "direction": torch.ones(4)}, str(tmp_path / "kind.safetensors"),
              metadata={"kind": "svm", "bias": "0.0"})
    with pytest.raises(FileFormatError, match="unknown kind 'svm'"):
        LinearProbe.load(tmp_path / "kind.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "p.safetensors").read_bytes()[:30])
    with pytest.raises(FileFormatError, match="cut.safetensors"):
        LinearProbe.load(tmp_path / "cut.safetensors")
    with pytest.raises(NonFiniteError):
        LinearProbe(torch.ones(4), float("inf"), "logistic", torch.ones(4) / 2)


def test_patching_results_are_checked(tmp_path):
    result = PatchingResult("heads", "denoise", "logit_diff", ("layer", "head"), {"layer": ["0", "1"], "head": ["0"]},
                            torch.zeros(2, 1), torch.ones(2, 1), 1.0, 0.0)
    result.save(tmp_path / "r.json")
    assert torch.equal(PatchingResult.load(tmp_path / "r.json").raw, result.raw)
    data = json.loads((tmp_path / "r.json").read_text())
    (tmp_path / "short.json").write_text(json.dumps({**data, "scores": [[0.0]]}))
    with pytest.raises(FileFormatError, match="short.json.*disagree"):
        PatchingResult.load(tmp_path / "short.json")
    (tmp_path / "nokey.json").write_text(json.dumps({k: v for k, v in data.items() if k != "raw"}))
    with pytest.raises(FileFormatError, match="lacks the key\\(s\\) raw"):
        PatchingResult.load(tmp_path / "nokey.json")
    (tmp_path / "cut.json").write_text((tmp_path / "r.json").read_text()[:25])
    with pytest.raises(FileFormatError, match="cut.json .patching result. is not valid JSON"):
        PatchingResult.load(tmp_path / "cut.json")

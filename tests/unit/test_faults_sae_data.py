"""Hostile input to dictionaries and activation stores: files that lie about their contents,
NaNs in the data, resumes with other settings, concurrent writers, paths that lead out of
their folder. Every case must fail loudly, naming the file / field and what differs."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import mechscope
from mechscope.data import ModelActivations, StoredActivations, harvest
from mechscope.data.store import LOCK_FILE, model_fingerprint
from mechscope.errors import (
    ConfigError,
    FileFormatError,
    InputTypeError,
    MissingFileError,
    NonFiniteError,
    OutOfRangeError,
    OutputFolderError,
    ResumeError,
)
from mechscope.sae import SAE, SAEConfig, SparseDictionaryData, TrainConfig, load_sae, save_sae, train

HOOK = "blocks.0.hook_resid_post"
DATA = SparseDictionaryData(n_features=16, d=8, p_active=0.1, batch_size=32, seed=0)
CFG = SAEConfig(8, 16, "topk", k=2)


def _contexts(n=8, pos=6, seed=0):
    return torch.randint(0, 250, (n, pos), generator=torch.Generator().manual_seed(seed))


def _saved(tmp_path, cfg=None, name="sae", strip_mechscope=False):
    """A saved random dictionary; optionally a SAELens-only file (no mechscope metadata, no checksum)."""
    sae = SAE(cfg or SAEConfig(8, 64, "topk", k=3), seed=1)
    folder = save_sae(sae, tmp_path / name)
    if strip_mechscope:
        _edit_cfg(folder, lambda c: [c["metadata"].pop(key) for key in ("mechscope", "weights_sha256")])
    return sae, folder


def _edit_cfg(folder, change):
    config = json.loads((folder / "cfg.json").read_text())
    change(config)
    (folder / "cfg.json").write_text(json.dumps(config))


def _edit_weights(folder, change):
    weights = load_file(folder / "sae_weights.safetensors")
    change(weights)
    save_file(weights, str(folder / "sae_weights.safetensors"))


# ------------------------------------------------------------------ 1. load_sae trusts nothing

def test_a_broadcastable_wrong_shape_is_refused_not_broadcast(tmp_path):
    _, folder = _saved(tmp_path, strip_mechscope=True)
    _edit_weights(folder, lambda w: w.update(b_dec=torch.ones(1)))  # [1] would broadcast into [8]
    with pytest.raises(FileFormatError, match=r"sae_weights.safetensors: tensor b_dec has shape \(1,\).*needs \(8,\)"):
        load_sae(folder)


TAMPERING = {  # jumprelu weights W_enc [8, 16], b_enc [16], W_dec [16, 8], b_dec [8], threshold [16]
    "missing": (lambda w: w.pop("threshold"), FileFormatError, r"missing \['threshold'\]"),
    "extra": (lambda w: w.update(W_skip=torch.zeros(8, 8)), FileFormatError, r"unexpected \['W_skip'\]"),
    "integer": (lambda w: w.update(b_enc=torch.zeros(16, dtype=torch.long)), FileFormatError, "b_enc is torch.int64"),
    "dtype": (lambda w: w.update(b_enc=w["b_enc"].half()), FileFormatError,
              "b_enc is torch.float16 but cfg.json says dtype 'float32'"),
    "nan": (lambda w: w["W_dec"].__setitem__((3, 2), float("nan")), NonFiniteError, "tensor W_dec holds 1 NaN"),
    "negative": (lambda w: w["threshold"].__setitem__(5, -1.0), FileFormatError, "threshold holds 1 negative"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tensors_must_match_the_config_exactly(tmp_path, case):
    change, error, match = TAMPERING[case]
    _, folder = _saved(tmp_path, SAEConfig(8, 16, "jumprelu"), strip_mechscope=True)
    _edit_weights(folder, change)
    with pytest.raises(error, match=match):
        load_sae(folder)


@pytest.mark.parametrize("key, architecture", [("k", "topk"), ("architecture", "topk"), ("d_in", "topk"),
                                               ("d_sae", "topk"), ("d_out", "transcoder")])
def test_saelens_keys_that_decide_the_dictionary_are_required(tmp_path, key, architecture):
    cfg = SAEConfig(8, 64, "relu", d_out=6) if architecture == "transcoder" else None
    _, folder = _saved(tmp_path, cfg, strip_mechscope=True)
    _edit_cfg(folder, lambda c: c.pop(key))
    # Before: k defaulted to 32 (not the saved 3), architecture to "standard".
    with pytest.raises(FileFormatError, match=rf"cfg.json lacks {key}"):
        load_sae(folder)


@pytest.mark.parametrize("key", ["k", "architecture", "d_sae"])
def test_mechscope_metadata_keys_are_required(tmp_path, key):
    _, folder = _saved(tmp_path)
    _edit_cfg(folder, lambda c: c["metadata"]["mechscope"].pop(key))
    with pytest.raises(ConfigError, match=rf"cfg.json \(metadata.mechscope\): SAE config lacks {key}"):
        load_sae(folder)


def test_saelens_fields_must_agree_with_the_mechscope_config(tmp_path):
    _, folder = _saved(tmp_path)
    _edit_cfg(folder, lambda c: c.update(k=7))
    with pytest.raises(FileFormatError, match="disagree with metadata.mechscope.*k: 7 vs metadata.mechscope's 3"):
        load_sae(folder)


def test_weights_from_another_save_are_detected(tmp_path):
    """A save interrupted between its two files (or a weights file swapped in) leaves a config
    that describes other weights; same shapes, so only the recorded checksum tells."""
    _, folder = _saved(tmp_path)
    other = save_sae(SAE(SAEConfig(8, 64, "topk", k=3), seed=2), tmp_path / "other")
    (folder / "sae_weights.safetensors").write_bytes((other / "sae_weights.safetensors").read_bytes())
    with pytest.raises(FileFormatError, match="different saves"):
        load_sae(folder)


def test_save_refuses_non_finite_weights_and_writes_nothing(tmp_path):
    sae = SAE(CFG)
    with torch.no_grad():
        sae.W_dec[0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="W_dec of the dictionary to save"):
        save_sae(sae, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file"):
        save_sae(SAE(CFG), tmp_path / "file")


@pytest.mark.parametrize("name", ["cfg.json", "sae_weights.safetensors"])
def test_truncated_files_name_the_path_and_say_delete(tmp_path, name):
    _, folder = _saved(tmp_path, strip_mechscope=True)
    path = folder / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(FileFormatError, match=rf"{name}.*corrupt or truncated; delete"):
        load_sae(folder)


# ------------------------------------------------------------------ 2. non-finite values

class _Poisoned:
    """SparseDictionaryData whose batch ``at`` holds ``value`` in one entry."""

    def __init__(self, at, value):
        self.at, self.value = at, value

    def batch(self, step):
        x = DATA.batch(step)
        if step == self.at:
            x = x.clone()
            x[0, 0] = self.value
        return x


@pytest.mark.parametrize("value, match", [(float("nan"), r"data.batch\(5\) inputs holds 1 NaN"),
                                          (3e38, "the loss of dictionary 0 .* at step 5")])
def test_one_bad_value_stops_training_before_any_checkpoint_holds_it(tmp_path, value, match):
    folder = tmp_path / "ckpt"
    with pytest.raises(NonFiniteError, match=match):
        train(CFG, _Poisoned(5, value), TrainConfig(steps=20, checkpoint_every=1), folder, progress=False)
    assert (folder / "latest").read_text() == "step-4"
    for tensor in load_file(folder / "step-4" / "dictionary_0.safetensors").values():
        assert torch.isfinite(tensor.float()).all()
    assert not (folder / LOCK_FILE).exists()  # released on the exception


# ------------------------------------------------------------------ 3. resume checks everything

def test_rerun_of_a_finished_folder_with_fewer_steps_is_refused(tmp_path):
    settings = TrainConfig(steps=12, checkpoint_every=4)
    (first,) = train(CFG, DATA, settings, tmp_path / "c", progress=False)
    # Before: the finished 12-step dictionary came back as the "6-step" result.
    with pytest.raises(ResumeError, match="steps: checkpoint 12, this run 6"):
        train(CFG, DATA, TrainConfig(steps=6, checkpoint_every=4), tmp_path / "c", progress=False)
    (again,) = train(CFG, DATA, TrainConfig(steps=12, checkpoint_every=3), tmp_path / "c", progress=False)
    for name, tensor in first.state_dict().items():  # same settings: the identical result
        assert torch.equal(again.state_dict()[name], tensor), name


@pytest.mark.parametrize("change, match", [
    (dict(lr=2e-3), "lr: checkpoint 0.001, this run 0.002"),
    (dict(seed=1), "seed: checkpoint 0, this run 1"),
    (dict(warmup_steps=3), "warmup_steps: checkpoint 50, this run 3"),
    (dict(aux_k=2), "aux_k: checkpoint None, this run 2"),
])
def test_resume_with_other_settings_names_each_difference(tmp_path, change, match):
    base = dict(steps=10, checkpoint_every=4)
    train(CFG, DATA, TrainConfig(**base), tmp_path / "c", progress=False)
    state = json.loads((tmp_path / "c" / "step-7" / "state.json").read_text())
    assert state["train"]["lr"] == 1e-3 and state["data"]["kind"] == "first_batch"
    with pytest.raises(ResumeError, match=match):
        train(CFG, DATA, TrainConfig(**base, **change), tmp_path / "c", progress=False)
    assert json.loads((tmp_path / "c" / "step-7" / "state.json").read_text()) == state  # not rewritten


def test_resume_on_other_data_is_refused(tmp_path, tiny_models):
    model = tiny_models["llama"]
    harvest(model, _contexts(), tmp_path / "store", [HOOK], shard_contexts=4, progress=False)
    cfg = SAEConfig(model.cfg.d_model, 32, "topk", k=4)
    settings = TrainConfig(steps=6, checkpoint_every=2)
    train(cfg, StoredActivations(tmp_path / "store", HOOK, batch_size=16), settings, tmp_path / "c", progress=False)
    with pytest.raises(ResumeError, match="data batch_size: checkpoint 16, this run 8"):
        train(cfg, StoredActivations(tmp_path / "store", HOOK, batch_size=8), settings, tmp_path / "c", progress=False)
    with pytest.raises(ResumeError, match="data seed: checkpoint 0, this run 3"):
        train(cfg, StoredActivations(tmp_path / "store", HOOK, batch_size=16, seed=3), settings, tmp_path / "c",
              progress=False)
    live = ModelActivations(model, _contexts(), HOOK, batch_contexts=2)
    with pytest.raises(ResumeError, match="data kind: checkpoint 'stored_activations', this run 'model_activations'"):
        train(cfg, live, settings, tmp_path / "c", progress=False)
    train(CFG, DATA, TrainConfig(steps=4, checkpoint_every=2), tmp_path / "d", progress=False)
    other_seed = SparseDictionaryData(n_features=16, d=8, p_active=0.1, batch_size=32, seed=9)
    with pytest.raises(ResumeError, match="data first_batch_sha256"):  # data without fingerprint(): its first batch
        train(CFG, other_seed, TrainConfig(steps=4, checkpoint_every=2), tmp_path / "d", progress=False)


def _stop_after(model, calls):
    """Make ``model`` fail after ``calls`` forward passes: an interrupted harvest."""
    original, count = model.run_with_cache, [0]

    def run(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    model.run_with_cache = run
    return model


@pytest.mark.parametrize("change, match", [
    ("weights", "model_sha256: the folder has '[0-9a-f]{64}', this call '[0-9a-f]{64}'"),
    ("dtype", "dtype: the folder has 'float32', this call 'float16'"),
    ("shard_contexts", "shard_contexts: the folder has 4, this call 2"),
])
def test_harvest_resume_with_another_model_or_dtype_is_refused(tmp_path, change, match):
    folder = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        harvest(_stop_after(mechscope.load_tiny("llama"), 1), _contexts(), folder, [HOOK], shard_contexts=4,
                batch_contexts=4, progress=False)
    assert json.loads((folder / "manifest.json").read_text())["contexts_done"] == 4
    model = mechscope.load_tiny("llama")
    kwargs = dict(shard_contexts=4, batch_contexts=4, progress=False)
    if change == "weights":
        with torch.no_grad():
            next(model.hf_model.parameters()).add_(0.01)
    elif change == "dtype":
        kwargs["dtype"] = torch.float16
    else:
        kwargs["shard_contexts"] = 2
    with pytest.raises(ResumeError, match=match):
        harvest(model, _contexts(), folder, [HOOK], **kwargs)
    # The original settings resume; int32 copies of the same ids are the same contexts.
    harvest(mechscope.load_tiny("llama"), _contexts().int(), folder, [HOOK], shard_contexts=4, batch_contexts=4,
            progress=False)
    assert json.loads((folder / "manifest.json").read_text())["contexts_done"] == 8


def test_old_manifests_still_read_but_do_not_resume(tmp_path, tiny_models):
    folder = tmp_path / "store"
    harvest(tiny_models["llama"], _contexts(), folder, [HOOK], shard_contexts=4, progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("format", "model_sha256", "batch_contexts"):
        del manifest[key]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert StoredActivations(folder, HOOK, batch_size=8).batch(0).shape == (8, 64)
    with pytest.raises(ResumeError, match="does not record batch_contexts, model_sha256"):
        harvest(tiny_models["llama"], _contexts(), folder, [HOOK], shard_contexts=4, progress=False)


def test_model_fingerprint_is_the_same_in_another_process(tiny_models):
    script = ("import json, mechscope; from mechscope.data.store import model_fingerprint; "
              "print(json.dumps(model_fingerprint(mechscope.load_tiny('llama'))))")
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(other.stdout.strip().splitlines()[-1]) == model_fingerprint(tiny_models["llama"])


# ------------------------------------------------------------------ 4. counts and sizes

@pytest.mark.parametrize("make, error, match", [
    (lambda: TrainConfig(steps=0), ConfigError, "steps must be at least 1"),
    (lambda: TrainConfig(steps=5, lr=0.0), ConfigError, "lr must be greater than 0"),
    (lambda: TrainConfig(steps=5, lr=float("nan")), NonFiniteError, "lr must be finite"),
    (lambda: TrainConfig(steps=5, warmup_steps=-1), ConfigError, "warmup_steps must be at least 0"),
    (lambda: TrainConfig(steps=5, decay_fraction=1.5), ConfigError, "decay_fraction must be at most 1"),
    (lambda: TrainConfig(steps=5, checkpoint_every=-2), ConfigError, "checkpoint_every must be at least 0"),
    (lambda: TrainConfig(steps=2.5), ConfigError, "steps must be an integer"),
    (lambda: SAEConfig(8, 16, "topk", k=17), ConfigError, "k must be at most 16"),
    (lambda: SAEConfig(0, 16, "relu"), ConfigError, "d_in must be at least 1"),
    (lambda: SAEConfig(8, 16, "gated"), ConfigError, "architecture must be one of.*relu.*topk"),
    (lambda: SAEConfig(8, 16, "topk", k=2, matryoshka_widths=(8, 16)), ConfigError, "is for architecture='matryoshka'"),
    (lambda: SAEConfig(8, 16, "jumprelu", jumprelu_bandwidth=0.0), ConfigError, "jumprelu_bandwidth must be greater"),
    (lambda: SAEConfig(8, 16, "relu", l1_coefficient=float("inf")), NonFiniteError, "l1_coefficient must be finite"),
])
def test_configs_validate_counts_and_choices(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(contexts=torch.zeros(0, 6, dtype=torch.long)), ConfigError, "contexts is empty"),
    (dict(contexts=torch.zeros(4, 1, dtype=torch.long)), ConfigError, "at least 2 positions"),
    (dict(contexts=torch.full((2, 5), 999)), OutOfRangeError, r"outside \[0, 259\)"),
    (dict(contexts=torch.zeros(2, 5)), InputTypeError, "integer tensor"),
    (dict(shard_contexts=0), ConfigError, "shard_contexts must be at least 1"),
    (dict(batch_contexts=0), ConfigError, "batch_contexts must be at least 1"),
    (dict(hook_names=HOOK), InputTypeError, "hook_names must be a list"),
    (dict(hook_names=[]), ConfigError, "hook_names is empty"),
    (dict(dtype=torch.int64), ConfigError, "dtype must be one of.*float32.*bfloat16"),
])
def test_harvest_validates_its_arguments_before_writing(tmp_path, tiny_models, kwargs, error, match):
    arguments = {"contexts": _contexts(), "hook_names": [HOOK], **kwargs}
    with pytest.raises(error, match=match):
        harvest(tiny_models["llama"], folder=tmp_path / "store", progress=False, **arguments)
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_readers_validate_their_sizes(tmp_path, tiny_models):
    model = tiny_models["llama"]
    harvest(model, _contexts(), tmp_path / "store", [HOOK], shard_contexts=4, progress=False)
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        StoredActivations(tmp_path / "store", HOOK, batch_size=0)
    with pytest.raises(ConfigError, match="step must be at least 0"):
        StoredActivations(tmp_path / "store", HOOK, batch_size=4).batch(-1)
    with pytest.raises(ConfigError, match="batch_contexts must be at least 1"):
        ModelActivations(model, _contexts(), HOOK, batch_contexts=0)


# ------------------------------------------------------------------ 5. concurrent writers

SLOW_HARVEST = """
import sys, time, torch, mechscope
from mechscope.data import harvest
model = mechscope.load_tiny("llama")
original = model.run_with_cache
def slow(*args, **kwargs):
    time.sleep(0.5)
    return original(*args, **kwargs)
model.run_with_cache = slow
contexts = torch.randint(0, 250, (8, 6), generator=torch.Generator().manual_seed(0))
harvest(model, contexts, sys.argv[1], ["blocks.0.hook_resid_post"], shard_contexts=1, batch_contexts=1, progress=False)
"""


def test_a_second_harvest_into_the_same_folder_is_locked_out(tmp_path, tiny_models):
    folder = tmp_path / "store"
    process = subprocess.Popen([sys.executable, "-c", SLOW_HARVEST, str(folder)])
    try:
        deadline = time.time() + 60
        while not (folder / "manifest.json").exists():
            assert time.time() < deadline and process.poll() is None, "the first harvest never started"
            time.sleep(0.05)
        with pytest.raises(OutputFolderError, match=rf"in use by another harvest \(process {process.pid} holds"):
            harvest(tiny_models["llama"], _contexts(), folder, [HOOK], shard_contexts=1, batch_contexts=1,
                    progress=False)
        # Before: both wrote shards and manifests into the folder at once. kill -9 leaves a
        # stale lock (its pid dead) that the next harvest takes over.
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    assert (folder / LOCK_FILE).read_text() == str(process.pid)
    harvest(tiny_models["llama"], _contexts(), folder, [HOOK], shard_contexts=1, batch_contexts=1, progress=False)
    assert json.loads((folder / "manifest.json").read_text())["contexts_done"] == 8
    assert not (folder / LOCK_FILE).exists()


def test_a_lock_of_a_live_process_is_refused_and_a_dead_ones_taken_over(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / LOCK_FILE).write_text(str(sleeper.pid))
        with pytest.raises(OutputFolderError, match=f"in use by another training run \\(process {sleeper.pid}"):
            train(CFG, DATA, TrainConfig(steps=2, checkpoint_every=1), folder, progress=False)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
    train(CFG, DATA, TrainConfig(steps=2, checkpoint_every=1), folder, progress=False)  # its pid is dead now
    assert not (folder / LOCK_FILE).exists()


# ------------------------------------------------------------------ 6. files stay inside their folder

@pytest.mark.parametrize("entry", ["../outside.safetensors", "/etc/passwd", "sub/shard.safetensors"])
def test_manifest_entries_must_be_plain_names(tmp_path, tiny_models, entry):
    folder = tmp_path / "store"
    harvest(tiny_models["llama"], _contexts(), folder, [HOOK], shard_contexts=4, progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0]["file"] = entry
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileFormatError, match=r"shards\[0\].file must be a plain file name"):
        StoredActivations(folder, HOOK)


@pytest.mark.parametrize("pointer", ["../elsewhere", "/tmp", "state.json"])
def test_the_latest_pointer_must_name_a_checkpoint_inside(tmp_path, pointer):
    folder = tmp_path / "c"
    train(CFG, DATA, TrainConfig(steps=4, checkpoint_every=2), folder, progress=False)
    (folder / "latest").write_text(pointer)
    with pytest.raises(FileFormatError, match="latest"):
        train(CFG, DATA, TrainConfig(steps=4, checkpoint_every=2), folder, progress=False)


@pytest.mark.parametrize("target", ["manifest", "state", "checkpoint"])
def test_corrupt_json_and_safetensors_say_which_file_to_delete(tmp_path, tiny_models, target):
    if target == "manifest":
        harvest(tiny_models["llama"], _contexts(), tmp_path / "s", [HOOK], shard_contexts=4, progress=False)
        path = tmp_path / "s" / "manifest.json"
        path.write_text(path.read_text()[:40])
        with pytest.raises(FileFormatError, match=rf"{re.escape(str(path))}.*not valid JSON.*delete the folder"):
            StoredActivations(tmp_path / "s", HOOK)
        return
    train(CFG, DATA, TrainConfig(steps=4, checkpoint_every=2), tmp_path / "c", progress=False)
    name = "state.json" if target == "state" else "dictionary_0.safetensors"
    path = tmp_path / "c" / "step-3" / name
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(FileFormatError, match=rf"{name}.*delete the checkpoint folder"):
        train(CFG, DATA, TrainConfig(steps=4, checkpoint_every=2), tmp_path / "c", progress=False)


# ------------------------------------------------------------------ siblings

def test_harvest_refuses_non_finite_activations_and_writes_no_shard(tmp_path):
    model = mechscope.load_tiny("llama")
    with torch.no_grad():
        next(model.hf_model.parameters())[5, 0] = float("nan")  # one embedding row
    contexts = _contexts()
    contexts[0, 2] = 5
    with pytest.raises(NonFiniteError, match=f"activations of {HOOK} for contexts 0..3"):
        harvest(model, contexts, tmp_path / "s", [HOOK], shard_contexts=4, batch_contexts=4, progress=False)
    assert not list((tmp_path / "s").glob("shard_*"))


def test_float16_harvest_trains_and_transcoders_need_pairs(tmp_path, tiny_models):
    model = tiny_models["llama"]
    harvest(model, _contexts(), tmp_path / "s", [HOOK], shard_contexts=4, dtype=torch.float16, progress=False)
    data = StoredActivations(tmp_path / "s", HOOK, batch_size=16)
    (sae,) = train(SAEConfig(64, 32, "topk", k=4), data, TrainConfig(steps=3), progress=False)
    assert torch.isfinite(sae.W_dec).all()
    with pytest.raises(ConfigError, match="dictionary 0 is a transcoder with d_out=64.*got no targets"):
        train(SAEConfig(64, 32, "topk", k=4, d_out=64), data, TrainConfig(steps=3), progress=False)
    with pytest.raises(ConfigError, match="inputs of width 64, but dictionary 0 has d_in=8"):
        train(CFG, data, TrainConfig(steps=3), progress=False)


def test_checkpoint_cleanup_touches_only_its_own_folders(tmp_path):
    folder = tmp_path / "c"
    (folder / "step-notes").mkdir(parents=True)
    train(CFG, DATA, TrainConfig(steps=6, checkpoint_every=2), folder, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["latest", "step-5", "step-notes"]


def test_a_manifest_that_lies_about_token_counts_is_refused(tmp_path, tiny_models):
    folder = tmp_path / "s"
    harvest(tiny_models["llama"], _contexts(), folder, [HOOK], shard_contexts=4, progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0]["tokens"] += 3
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FileFormatError, match=r"shard_00000.safetensors: blocks.0.hook_resid_post is .* need floating \[23"):
        StoredActivations(folder, HOOK, batch_size=40).batch(0)
    with pytest.raises(MissingFileError, match="no manifest.json"):
        StoredActivations(tmp_path / "nowhere", HOOK)


def test_harvest_resume_refuses_edited_shard_names_and_missing_shards(tmp_path, tiny_models):
    folder = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        harvest(_stop_after(mechscope.load_tiny("llama"), 1), _contexts(), folder, [HOOK], shard_contexts=4,
                batch_contexts=4, progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"][0]["file"] = "shard_00001.safetensors"  # the next shard would overwrite it
    (folder / "manifest.json").write_text(json.dumps(manifest))
    resume = dict(shard_contexts=4, batch_contexts=4, progress=False)
    with pytest.raises(FileFormatError, match=r"shards\[0\].file is 'shard_00001.safetensors', not 'shard_00000"):
        harvest(tiny_models["llama"], _contexts(), folder, [HOOK], **resume)
    manifest["shards"][0]["file"] = "shard_00000.safetensors"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "shard_00000.safetensors").unlink()
    with pytest.raises(MissingFileError, match="shard_00000.safetensors is listed in .* but missing"):
        harvest(tiny_models["llama"], _contexts(), folder, [HOOK], **resume)


def test_only_batch_pos_width_hooks_are_stored(tmp_path, tiny_models):
    # Before: [:, 1:] of a [batch, head, q, k] pattern dropped a head, not BOS, and stored it.
    with pytest.raises(ConfigError, match="blocks.0.attn.hook_pattern has axes .*head"):
        harvest(tiny_models["llama"], _contexts(), tmp_path / "s", ["blocks.0.attn.hook_pattern"], progress=False)
    with pytest.raises(ConfigError, match="hook_z has axes"):
        ModelActivations(tiny_models["llama"], _contexts(), "blocks.0.attn.hook_z", batch_contexts=2)


def test_model_activations_fingerprint_covers_the_weights(tmp_path):
    settings, cfg = TrainConfig(steps=4, checkpoint_every=2), SAEConfig(64, 32, "topk", k=4)
    model = mechscope.load_tiny("llama")
    train(cfg, ModelActivations(model, _contexts(), HOOK, batch_contexts=2), settings, tmp_path / "c", progress=False)
    with torch.no_grad():
        next(model.hf_model.parameters()).mul_(1.5)
    with pytest.raises(ResumeError, match="data model_sha256: checkpoint '[0-9a-f]{64}', this run '[0-9a-f]{64}'"):
        train(cfg, ModelActivations(model, _contexts(), HOOK, batch_contexts=2), settings, tmp_path / "c",
              progress=False)


def test_sae_inputs_of_the_wrong_width_are_refused():
    sae = SAE(CFG)
    with pytest.raises(ConfigError, match=r"the input x must be \[..., 8\].*got shape \(3, 1\)"):
        sae(torch.randn(3, 1))  # before: broadcast against b_dec into a [3, 8] "reconstruction"
    with pytest.raises(ConfigError, match=r"latents must be \[..., 16\]"):
        sae.decode(torch.randn(3, 8))
    with pytest.raises(ConfigError, match="metadata must be JSON-serialisable"):
        SAEConfig(8, 16, "relu", metadata={"when": object()})


def test_corpus_arguments_and_jsonl_lines_are_checked(tmp_path, tiny_models):
    from mechscope.data import load_texts, pack, stdlib_docstrings

    tokenizer = tiny_models["llama"].tokenizer
    with pytest.raises(ConfigError, match="n_contexts must be at least 1"):
        pack(tokenizer, ["some text " * 50], 8, n_contexts=0)  # before: returned one context
    with pytest.raises(InputTypeError, match="got one string"):
        pack(tokenizer, "some text " * 50, 8)  # before: packed it character by character
    with pytest.raises(ConfigError, match="limit must be at least 1"):
        stdlib_docstrings(limit=0)  # before: one docstring
    lines = tmp_path / "c.jsonl"
    lines.write_text(json.dumps({"text": "one"}) + "\n{\"text\": \"tw\n")
    with pytest.raises(FileFormatError, match=r"c.jsonl:2 is not valid JSON"):
        load_texts(lines)
    lines.write_text(json.dumps("a text") + "\n")
    with pytest.raises(FileFormatError, match=r"c.jsonl:1 must be a JSON object"):
        load_texts(lines)  # before: "text" in "a text" was True, then a TypeError


def test_an_unfinished_harvest_is_refused_unless_partial_is_allowed(tmp_path):
    model = mechscope.load_tiny("llama")
    contexts = torch.randint(0, 200, (8, 6), generator=torch.Generator().manual_seed(0))
    folder = harvest(model, contexts, tmp_path / "s", [HOOK], shard_contexts=4, progress=False)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"], manifest["contexts_done"] = manifest["shards"][:1], 4  # as if killed after one shard
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MissingFileError, match="incomplete \\(4 of 8 contexts\\)"):
        StoredActivations(folder, HOOK, batch_size=4)
    assert StoredActivations(folder, HOOK, batch_size=4, allow_partial=True).batch(0).shape[0] == 4

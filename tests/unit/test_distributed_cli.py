"""``torchrun --nproc-per-node 2 -m mechscope sae train ...``: two real ranks on loopback give
the one-process dictionary (to float32 reduction order), and the folder they wrote resumes
in one process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

TORCHRUN = Path(sys.executable).parent / "torchrun"
TRAIN = ["sae", "train", "--hook", "blocks.1.hook_resid_post", "--d-sae", "64", "--k", "4", "--tokens", "6k",
         "--batch-size", "512", "--harvest-contexts", "24", "--arch", "batchtopk"]


def run(command, timeout=300):
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is installed with torch")
def test_torchrun_two_ranks_train_the_one_process_dictionary_and_resume_in_one(tmp_path, tiny_llama_folder):
    model = ["--model", str(tiny_llama_folder)]
    code, output = run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "mechscope", *TRAIN, *model,
                        "--out", str(tmp_path / "two")])
    assert code == 0, output[-3000:]
    assert "2 ranks (gloo)" in output and "256 per rank" in output
    code, output = run([sys.executable, "-m", "mechscope", *TRAIN, *model, "--out", str(tmp_path / "one")])
    assert code == 0, output[-3000:]
    two, one = (load_file(str(tmp_path / name / "sae" / "sae_weights.safetensors")) for name in ("two", "one"))
    assert set(two) == set(one)
    assert max(float((two[name] - one[name]).abs().max()) for name in one) < 1e-5
    assert float((one["W_dec"] - one["W_dec"].roll(1, 0)).abs().max()) > 1e-2  # not a trivially equal dictionary
    # The folder written by two ranks continues in one process (same options: nothing refused).
    code, output = run([sys.executable, "-m", "mechscope", *TRAIN, *model, "--out", str(tmp_path / "two")])
    assert code == 0, output[-3000:]
    assert "resuming the earlier `sae train` run" in " ".join(output.split())

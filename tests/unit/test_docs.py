"""The docs stay true to the code."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_hooks_md_is_generated_from_the_current_adapters():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_hooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_quickstart_example_runs_on_a_tiny_model():
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--tiny"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resid_mid - (resid_pre + attn_out)" in result.stdout
    gap = float(result.stdout.split("resid_mid - (resid_pre + attn_out) at layer 1: ")[1].split()[0])
    assert gap < 1e-5

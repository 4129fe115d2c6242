"""The docs stay true to the code."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_hooks_md_is_generated_from_the_current_adapters():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_hooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

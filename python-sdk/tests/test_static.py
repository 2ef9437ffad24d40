"""The static checks the SDK declares, run with the suite: mypy (configured in pyproject.toml:
strict), `ruff check` and `ruff format --check`. Each fails with the tool's own report; a tool
that is not installed skips its test (scripts/test-requirements.txt pins both)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

SDK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECKS = {
    "mypy": ["mypy"],
    "ruff check": ["ruff", "check", "."],
    "ruff format": ["ruff", "format", "--check", "--diff", "."],
}


@pytest.mark.parametrize("name", list(CHECKS))
def test_static_check_is_clean(name):
    argv = CHECKS[name]
    if importlib.util.find_spec(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed for {sys.executable} (pip install -r scripts/test-requirements.txt)")
    # From the SDK directory, so pyproject.toml's [tool.mypy] and [tool.ruff] apply.
    out = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=SDK,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = (out.stdout + out.stderr).strip()
    assert out.returncode == 0, f"`{' '.join(argv)}` in {SDK} exited with {out.returncode}:\n{report}"

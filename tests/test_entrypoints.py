"""Both ways of starting the CLI reach every subcommand (`python -m synapse7.cli` runs the module top to bottom,
so a subcommand defined after its `__main__` guard would be a NameError there and nowhere else)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def test_every_subcommand_starts_through_python_dash_m() -> None:
    from synapse7.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    # One interpreter runs the module as __main__ once per subcommand (torch is imported once).
    script = """
import runpy, sys
failed = []
for name in sys.argv[1:]:
    sys.argv = ["synapse7.cli", name, "--help"]
    try:
        runpy.run_module("synapse7.cli", run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            failed.append(name)
    except Exception as e:  # e.g. NameError: a subcommand defined after the guard
        failed.append(f"{name}: {e!r}")
print("FAILED", failed, file=sys.stderr)
sys.exit(1 if failed else 0)
"""
    r = _run("-c", script, *sorted(sub.choices))
    assert r.returncode == 0, r.stderr[-2000:]

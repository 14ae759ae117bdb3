"""Running a ``bench`` suite from the tests as a user runs it: ``python -m bench.<suite>`` from the
checkout, in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_suite(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m *args`` with this checkout first on the path; output captured, 50 s at most."""
    full = dict(os.environ if env is None else env)
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=str(ROOT),
        env=full,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )

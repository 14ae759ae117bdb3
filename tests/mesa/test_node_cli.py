"""``python -m mesa.node`` as a user meets it: --help, and one clear line for a bad flag value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.cluster import env


def _node(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesa.node", *args],
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )


def test_help_explains_every_flag() -> None:
    result = _node("--help")
    assert result.returncode == 0
    for flag in (
        "--role",
        "--ip",
        "--port",
        "--http-port",
        "--work-dir",
        "--master",
        "--resources",
        "--attributes",
        "--log-format",
        "--agent-ping-interval",
        "--offer-timeout",
        "--command-tasks",
        "--gc-disk-headroom",
        "--disk-watch-interval",
    ):
        assert flag in result.stdout, flag


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--role=agent", "--master=localhost"], "not HOST:PORT"),
        (["--role=agent", "--master=127.0.0.1:5050", "--resources=cpus:two"], "two"),
        (["--role=master", "--port=70000"], "outside 0..65535"),
        (["--role=master", "--allocation-interval=-1"], "greater than zero"),
        (["--role=agent", "--master=127.0.0.1:5050", "--attributes=rack"], "NAME:VALUE"),
        (["--role=agent"], "needs --master"),
        (["--role=queen"], "invalid choice"),
        (["--role=agent", "--master=127.0.0.1:5050", "--command-tasks=fork"], "invalid choice"),
        (["--role=agent", "--master=127.0.0.1:5050", "--gc-disk-headroom=1.5"], "between 0 and 1"),
        (["--role=agent", "--master=127.0.0.1:5050", "--disk-watch-interval=0"], "greater than"),
        (["--role=agent", "--master=127.0.0.1:5050", "--disk-watch-interval=inf"], "finite"),
        (["--role=agent", "--master=127.0.0.1:5050", "--gc-delay=1e300"], "ten years"),
        (["--role=master", "--allocation-interval=nan"], "greater than zero"),
    ],
)
def test_bad_flag_values_end_in_one_clear_line(args: list[str], expected: str) -> None:
    result = _node(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert expected in result.stderr

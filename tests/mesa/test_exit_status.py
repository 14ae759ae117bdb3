"""How an exit reads in task messages: every code the same words whether or not it is one of
the precomputed ones."""

from __future__ import annotations

import pytest

from mesa.exit_status import describe


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (0, "exited with status 0"),
        (3, "exited with status 3"),
        (255, "exited with status 255"),
        (256, "exited with status 256"),  # (not a real exit code; still said plainly)
        (-9, "terminated by signal SIGKILL"),
        (-15, "terminated by signal SIGTERM"),
        (-99, "terminated by signal 99"),
        (None, "exit status unknown"),
    ],
)
def test_describe(code: int | None, words: str) -> None:
    assert describe(code) == words

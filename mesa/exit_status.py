"""Reading a process's end the way people say it: "exited with status 3", "terminated by SIGKILL".

Statuses travel as ``Popen.returncode`` does (the exit code, or minus the signal number), which is
what asyncio and subprocess hand back; this module turns one into words for task messages and
logs, so the agent's and the command executor's messages read the same.
"""

from __future__ import annotations

import signal

__all__ = ["describe"]


# Every exit code's words, made once: an agent describes each direct task's end (thousands a
# second), and nearly all of them are "exited with status 0".
_EXITED = tuple(f"exited with status {code}" for code in range(256))


def describe(returncode: int | None) -> str:
    """``0`` → "exited with status 0"; ``-9`` → "terminated by signal SIGKILL"; None → unknown."""
    if type(returncode) is int and 0 <= returncode < 256:
        return _EXITED[returncode]
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"terminated by signal {name}"
    return f"exited with status {returncode}"

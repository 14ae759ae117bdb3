"""A stand-in for ``python -m mesa.zygote``: mesa's own zygote, except that a child it starts
with ``exec`` stops just before its exec until the test lets it go (test_containerizer).

Why. A real zygote starts a command with ``posix_spawn`` (vfork, then exec) and waits in vfork
until its child has exec'd. Killed meanwhile, it leaves a child that is not yet the command:
born in the sandbox (the zygote went there to start it) and with the zygote's environment (no
``MESA_CONTAINER_ID`` yet), which goes on to exec the command once it gets a CPU. That moment
lasts microseconds, and a test cannot hit it on purpose; here it lasts until the test says.

The child here does what ``posix_spawn``'s does, in the same order (a session of its own, the
sandbox its working directory, descriptors 0-2 replaced, so it no longer holds the zygote's
stdout), then makes the FIFO ``<sandbox>/release``, writes its pid to ``<sandbox>/held.pid``
and waits for a ``g`` on that FIFO: with it, it execs the command; without (the FIFO's writer
gone), it exits 125. The zygote meanwhile waits, as in vfork, until its child has exec'd or
ended. Run as a script (``python held_zygote.py``) with this checkout on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys

import mesa.zygote


def _held_spawn(
    executable: str,
    argv: list[str],
    cwd: str,
    env: dict[str, str],
    stdin: int | None,
    out: int,
    err: int,
) -> int:
    if os.sep not in executable:
        executable = shutil.which(executable, path=env.get("PATH", os.defpath)) or executable
    execd_r, execd_w = os.pipe()  # close-on-exec: EOF once the child has exec'd (or ended)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 127
        try:
            os.setsid()
            os.chdir(cwd)
            os.dup2(stdin if stdin is not None else os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            for sig in mesa.zygote._RESTORED_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            release = os.path.join(cwd, "release")
            os.mkfifo(release)
            with open(os.path.join(cwd, "held.pid.tmp"), "w") as f:
                f.write(str(os.getpid()))
            os.rename(os.path.join(cwd, "held.pid.tmp"), os.path.join(cwd, "held.pid"))
            fd = os.open(release, os.O_RDONLY)  # (blocks until the test opens it to write)
            if os.read(fd, 1) != b"g":
                code = 125
            else:
                os.close(fd)
                os.execve(executable, argv, env)
        finally:
            os._exit(code)
    os.close(execd_w)
    os.read(execd_r, 1)  # as vfork: back once the child has exec'd or ended
    os.close(execd_r)
    return pid


if __name__ == "__main__":
    mesa.zygote._posix_spawn = _held_spawn
    sys.exit(mesa.zygote.main())

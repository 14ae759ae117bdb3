"""What a :class:`~mesa.info.CommandInfo` means as a process to start.

Shared by the containerizer (executor commands) and the command executor (task commands), so
``shell`` means the same in both places — Mesos's meaning: ``shell=True`` runs ``value`` with
``/bin/sh -c``; ``shell=False`` runs the program ``value`` with ``arguments`` as its whole argv
(``arguments[0]`` is argv[0]), or with argv ``[value]`` when there are no arguments.
"""

from __future__ import annotations

from mesa.info import CommandInfo

__all__ = ["command_argv"]


def command_argv(command: CommandInfo) -> tuple[str, list[str]]:
    """``(executable, argv)`` to hand to ``exec``; ValueError for a command with no value."""
    if not isinstance(command, CommandInfo) or not command.value:
        raise ValueError("the command has no value")
    if command.shell:
        return "/bin/sh", ["/bin/sh", "-c", command.value]
    argv = [str(a) for a in command.arguments] if command.arguments else [command.value]
    return command.value, argv

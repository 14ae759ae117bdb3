"""What a :class:`~mesa.info.CommandInfo` means as a process to start.

Shared by the containerizer (executor commands) and the command executor (task commands), so
``shell`` means the same in both places — Mesos's meaning: ``shell=True`` runs ``value`` with
``/bin/sh -c``; ``shell=False`` runs the program ``value`` with ``arguments`` as its whole argv
(``arguments[0]`` is argv[0]), or with argv ``[value]`` when there are no arguments.

A shell command that is only a program and its plain arguments (``sleep 0.5``, ``python3
job.py --day=3``) may skip the shell: :func:`simple_command` recognises one, as GNU make does
for its recipe lines. ``sh -c`` would only search ``PATH`` and run the program, after a fork of
its own (Debian's dash does not exec the last command): a millisecond of CPU per task on these
machines, more than the program often costs. Anything the shell gives a meaning to (quotes,
``$``, globs, redirections, ``;``/``&&``/``|``, ``~``, ``VAR=x cmd``, a builtin or a keyword)
keeps it.
"""

from __future__ import annotations

import re

from mesa.info import CommandInfo

__all__ = ["SHELL_WORDS", "command_argv", "simple_command"]

# Reserved words and builtins of POSIX sh, dash and bash: a command starting with one means
# what that shell says (``echo -e``, ``exit 3``, ``cd``), never a program's run. ``true`` and
# ``false`` are here too: /bin/true would do the same, but as builtins they cost the shell no
# exec, so skipping it saves little.
SHELL_WORDS = frozenset(
    """
    ! { } [ [[ ]] case coproc do done elif else esac fi for function if in select then time
    until while
    . : break continue eval exec exit export readonly return set shift times trap unset
    alias bg bind builtin caller cd chdir command compgen complete compopt declare dirs disown
    echo enable false fc fg getopts hash help history jobs kill let local logout mapfile popd
    printf pushd pwd read readarray shopt source suspend test true type typeset ulimit umask
    unalias wait
    """.split()
)

# Words the shell passes through untouched: no quoting, expansion, globbing, redirection,
# separators or comments can hide in these characters.
_SIMPLE = re.compile(r"[A-Za-z0-9_@%+=:,./-]+(?:[ \t]+[A-Za-z0-9_@%+=:,./-]+)*")


def command_argv(command: CommandInfo) -> tuple[str, list[str]]:
    """``(executable, argv)`` to hand to ``exec``; ValueError for a command with no value."""
    if not isinstance(command, CommandInfo) or not command.value:
        raise ValueError("the command has no value")
    if command.shell:
        return "/bin/sh", ["/bin/sh", "-c", command.value]
    argv = [str(a) for a in command.arguments] if command.arguments else [command.value]
    return command.value, argv


def simple_command(value: str) -> list[str] | None:
    """The words of ``value`` if ``/bin/sh -c value`` would do nothing but run a program with
    them as its argv; None when the shell would do more. The program is a bare name (looked up
    on ``PATH``) or an absolute path; a relative path depends on the working directory, and is
    left to the shell. Finding the program, and whether ``exec`` can run it (a script without a
    ``#!`` line cannot: the shell would read it itself), is the caller's part."""
    text = value.strip()
    if not _SIMPLE.fullmatch(text):
        return None
    words = text.split()
    program = words[0]
    if program in SHELL_WORDS or "=" in program:  # (``X=1 cmd`` sets a variable)
        return None
    if "/" in program and not program.startswith("/"):
        return None
    return words

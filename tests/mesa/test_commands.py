"""What a CommandInfo means as a process: the shell, and the commands that can skip it."""

from __future__ import annotations

import pytest

from mesa.commands import SHELL_WORDS, command_argv, simple_command
from mesa.info import CommandInfo


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("sleep 0.5", ["sleep", "0.5"]),
        ("  python3   job.py --day=3 ", ["python3", "job.py", "--day=3"]),
        ("/usr/bin/env python3 -V", ["/usr/bin/env", "python3", "-V"]),
        ("nice -n 5 make all", ["nice", "-n", "5", "make", "all"]),
        ("cp a,b c:d e@f 50%", ["cp", "a,b", "c:d", "e@f", "50%"]),
    ],
)
def test_a_program_and_plain_arguments_need_no_shell(value: str, words: list[str]):
    assert simple_command(value) == words


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "true",  # builtins: the shell runs them itself
        "echo -e 'a'",
        "exit 3",
        "cd /tmp",
        "for x in 1; do :; done",
        "X=1 env",  # an assignment
        "ls *.txt",  # a glob
        "ls ?",
        "ls [ab]",
        "echo $HOME",  # an expansion
        "cat ~/x",
        "echo `date`",
        'grep "a b" f',  # quotes
        "grep a\\ b f",
        "a && b",  # lists, pipes, background, subshells
        "a; b",
        "a | b",
        "a &",
        "(a)",
        "a > f",  # redirections
        "a < f",
        "a # comment",
        "a\nb",
        "./run.sh",  # relative to the working directory
        "bin/run",
        "{ a; }",
    ],
)
def test_anything_the_shell_would_interpret_keeps_the_shell(value: str):
    assert simple_command(value) is None


def test_the_words_cover_posix_sh_dash_and_bash():
    for word in ("exec", "export", "[", "[[", "source", ".", "time", "kill", "printf", "test"):
        assert word in SHELL_WORDS


def test_command_argv_is_unchanged_by_the_fast_path():
    # The containerizer decides, knowing PATH; command_argv stays Mesos's meaning.
    assert command_argv(CommandInfo("sleep 1")) == ("/bin/sh", ["/bin/sh", "-c", "sleep 1"])
    assert command_argv(CommandInfo("/bin/echo", shell=False, arguments=["echo", "x"])) == (
        "/bin/echo",
        ["echo", "x"],
    )

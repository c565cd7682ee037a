"""The README's code runs as written: its Python blocks are executed, its shell commands are
parsed by the CLI (running them is the job of the tests of each command) and its make targets exist."""

import re
import shlex
from pathlib import Path

import pytest

from adaptact.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _commands() -> list[str]:
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line:
                commands.append(line)
    return commands


def test_the_readme_has_code():
    assert _blocks("python") and _commands()


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_blocks_run(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what the examples write lands here
    exec(compile(_blocks("python")[index], f"README.md python block {index}", "exec"), {})


@pytest.mark.parametrize("command", _commands())
def test_shell_commands_parse(command):
    argv = shlex.split(command)
    if argv[0] == "make":
        targets = re.findall(r"^([\w-]+):", (README.parent / "Makefile").read_text(), flags=re.M)
        assert argv[1] in targets
    else:
        assert argv[0] == "adaptact", command
        build_parser().parse_args(argv[1:])  # exits (a test failure) on an unknown option or value

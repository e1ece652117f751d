"""Every command the README shows exists and accepts its arguments; CI runs the README's test command."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[list[str]]:
    """Shell commands in the README's bash blocks (comments dropped, `&&` chains split)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = line.split("   #")[0].strip()
            if not line or line.startswith("#"):
                continue
            for part in line.split("&&"):
                words = shlex.split(part)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # NPROC=2 bash ...
                    words = words[1:]
                commands.append(words)
    return commands


def parse(words: list[str]) -> None:
    """Parse ``words`` with the real argument parser of the program they name (nothing runs)."""
    from napari_samlung.cli import build_parser
    from training.finetune import get_args_parser

    program = Path(words[0]).name
    if program == "samlung":
        build_parser().parse_args(words[1:])
    elif program == "samlung-finetune":
        get_args_parser().parse_args(words[1:])
    elif program == "torchrun":
        module = words.index("-m")
        assert words[module + 1] in ("napari_samlung.cli", "training.finetune"), words
        parse(["samlung" if words[module + 1] == "napari_samlung.cli" else "samlung-finetune", *words[module + 2:]])
    elif program == "bash" and words[1] == "training/run.sh":
        assert (ROOT / "training" / "run.sh").is_file()
        get_args_parser().parse_args(words[2:])
    elif program in ("setup.sh", "xvfb-run"):
        pass  # checked below
    else:
        raise AssertionError(f"the README shows a command the tests do not know: {' '.join(words)}")


@pytest.mark.parametrize("words", readme_commands(), ids=lambda w: " ".join(w)[:70])
def test_readme_command_exists_and_accepts_its_arguments(words):
    parse(words)


def test_readme_starts_with_the_demo_and_the_test_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    assert blocks[0].strip() == "./scripts/setup.sh && .venv/bin/samlung demo"
    assert blocks[1].strip() == "./scripts/setup.sh && xvfb-run -a .venv/bin/python -m pytest"
    assert README.index(blocks[1]) < 1500, "the two commands belong on the first screen"


def test_ci_runs_the_readme_test_command():
    test_command = re.findall(r"```bash\n(.*?)```", README, flags=re.S)[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci
    for script in (ROOT / ".ci" / "run", ROOT / "scripts" / "setup.sh"):
        assert os.access(script, os.X_OK), f"{script} is not executable"

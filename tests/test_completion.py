"""Shell completion (``cened completion bash|zsh``, from the parser by shtab), and examples in ``--help``."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys

import pytest

from cened.cli import main
from cened.commands import COMMANDS


def _script(shell: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cened", "completion", shell], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


#: What bash offers for a line being typed (the last word unfinished), as its completion would.
BASH_COMPLETE = """
source "$1"
COMP_WORDS=("${@:2}"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}
_shtab_cened cened "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}"
printf '%s\\n' "${COMPREPLY[@]}"
"""


@pytest.mark.parametrize(
    "words,offered",
    [
        (["cened", "rev"], ["review"]),
        (["cened", "classify", "--ap"], ["--apply"]),
        (["cened", "correct", "--new"], ["--new-album"]),
        (["cened", "run", "--log-format", ""], ["auto", "json", "console"]),
        (["cened", "train", "--var"], ["--variant"]),  # options declared only when a command runs
        (["cened", "completion", ""], ["bash", "zsh"]),
    ],
)
def test_bash_completes_commands_options_and_choices(tmp_path, words: list[str], offered: list[str]) -> None:
    if shutil.which("bash") is None:
        pytest.skip("no bash on this machine")
    script = tmp_path / "cened.bash"
    script.write_text(_script("bash"))
    done = subprocess.run(
        ["bash", "-c", BASH_COMPLETE, "complete", str(script), *words], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert [w for w in done.stdout.splitlines() if w] == offered


def test_bash_completes_a_path_with_file_names(tmp_path) -> None:
    (tmp_path / "holiday-photos").mkdir()
    script = tmp_path / "cened.bash"
    script.write_text(_script("bash"))
    words = ["cened", "classify", str(tmp_path / "holi")]
    done = subprocess.run(
        ["bash", "-c", BASH_COMPLETE, "complete", str(script), *words], capture_output=True, text=True
    )
    assert str(tmp_path / "holiday-photos") in done.stdout


def test_the_zsh_script_is_zsh(tmp_path) -> None:
    text = _script("zsh")
    assert text.startswith("#compdef cened") and "review" in text and "--new-album" in text
    if shutil.which("zsh") is None:
        pytest.skip("no zsh on this machine to parse the script (Debian: apt-get install zsh)")
    script = tmp_path / "_cened"
    script.write_text(text)
    done = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # Loaded as zsh loads a completion function: it defines _cened without an error.
    load = f"autoload -U compinit && compinit -u -D && fpath=({tmp_path} $fpath) && autoload -U _cened && "
    load += "whence -w _cened"
    done = subprocess.run(["zsh", "-f", "-c", load], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "_cened: function" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_shows_an_example_in_its_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    command = importlib.import_module(f"cened.commands.{name}")
    with pytest.raises(SystemExit):
        main([command.NAME, "--help"])
    help_text = capsys.readouterr().out
    assert "\nexamples:\n" in help_text and f"\n  cened {command.NAME}" in help_text

"""The README and the data contracts say what the code does: every command, option and setting
they name exists, the settings reference is the one config.py generates, and the column lists
are the code's."""

from __future__ import annotations

import re
from pathlib import Path

from flows.cli import parser
from pipeline.config import settings_reference
from pipeline.ingest import QUARANTINE_COLUMNS
from pipeline.report import REPORT_COLUMNS
from pipeline.workspace import MANIFEST_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONTRACTS = (ROOT / "docs" / "data-contracts.md").read_text()


def test_readme_is_short_and_for_users():
    assert len(README.splitlines()) <= 350
    assert not re.search(r"\bsession", README, re.IGNORECASE)


def test_settings_reference_is_the_one_config_py_generates():
    block = README.split("<!-- settings:begin -->\n")[1].split("<!-- settings:end -->")[0]
    assert block == settings_reference(), "run: panelscan settings, and paste it between the markers"


def _subcommands() -> dict[str, set[str]]:
    sub = next(a for a in parser()._actions if a.dest == "command")
    return {name: {flag for action in p._actions for flag in action.option_strings} for name, p in sub.choices.items()}


def test_every_command_and_option_the_readme_names_exists():
    commands = _subcommands()
    fenced = "\n".join(re.findall(r"^```.*?\n(.*?)^```", README, re.MULTILINE | re.DOTALL))
    fenced = re.sub(r"\n {8,}", " ", fenced)  # a command's options continued on the next lines
    named = re.findall(r"^panelscan (\w+)(.*)$", fenced, re.MULTILINE)
    named += re.findall(r"(?:`|\.venv/bin/)panelscan (\w+)((?: --?[\w-]+(?: [^\s`-][^\s`]*)?)*)", README)
    assert {cmd for cmd, _ in named} >= {"synth", "ingest", "train", "calibrate", "score", "nightly", "bench", "settings"}
    for cmd, rest in named:
        assert cmd in commands, f"README names `panelscan {cmd}`, which does not exist"
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
            assert flag in commands[cmd], f"README gives `panelscan {cmd}` the option {flag}, which it does not have"
    assert set(commands) <= {cmd for cmd, _ in named}, "a command the README does not name"


def test_the_data_contracts_list_the_columns_the_code_writes():
    for columns in (MANIFEST_COLUMNS, QUARANTINE_COLUMNS):
        for column in columns:
            assert f"`{column}`" in CONTRACTS, column
    for column in REPORT_COLUMNS:
        assert f"`{column}`" in README, column


def test_settings_command_prints_the_values_a_config_file_sets(tmp_path: Path, capsys):
    from flows.cli import main

    (tmp_path / "site.json").write_text('{"train": {"epochs": 7}}')
    assert main(["settings", "--config", str(tmp_path / "site.json")]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| setting | value |") and "| `train.epochs` | `7` |" in table
    assert main(["settings"]) == 0 and capsys.readouterr().out.startswith("| setting | default |")

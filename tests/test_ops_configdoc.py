"""The configuration reference in the README is generated from Settings, and a test keeps them equal."""

from __future__ import annotations

import re
from pathlib import Path

from test_ops_support import REPO, cli

from bot import configdoc
from bot.settings import Settings

README = REPO / "README.md"


def test_readme_configuration_table_matches_the_settings() -> None:
    assert README.is_file(), f"{README} is missing"
    block = configdoc.extract_block(README.read_text(encoding="utf-8"))
    assert block is not None, (
        f"README.md has no configuration block: add a '{configdoc.START}' line and a '{configdoc.END}' line "
        "and run `sightline config-docs --write README.md`"
    )
    ok, message = configdoc.compare(README)
    assert ok, message


def test_table_lists_every_setting_with_its_description() -> None:
    table = configdoc.config_table()
    rows = [line for line in table.splitlines() if line.startswith("| `SIGHTLINE_")]
    assert len(rows) == len(Settings.model_fields)
    for name, info in Settings.model_fields.items():
        assert info.description, f"Settings.{name} has no description: the README would show an empty cell"
        assert f"| `SIGHTLINE_{name.upper()}` |" in table
    assert "| `SIGHTLINE_MODE` | `polling` \\| `webhook` | `polling` |" in table
    assert "| `SIGHTLINE_TELEGRAM_TOKEN` | secret, optional | *(unset)* |" in table


def test_check_and_write_on_a_file(tmp_path: Path) -> None:
    doc = tmp_path / "DOC.md"
    doc.write_text(f"# Title\n\n{configdoc.START}\n| stale |\n{configdoc.END}\n\nafter\n", encoding="utf-8")
    code, _, err = cli("config-docs", "--check", str(doc))
    assert code == 1 and "stale" in err and "--write" in err
    assert cli("config-docs", "--write", str(doc))[0] == 0
    code, out, _ = cli("config-docs", "--check", str(doc))
    assert code == 0 and "up to date" in out
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\n") and text.endswith("\n\nafter\n")
    code, out, _ = cli("config-docs")
    assert code == 0 and out == configdoc.config_block()

    (tmp_path / "none.md").write_text("no markers\n")
    code, _, err = cli("config-docs", "--check", str(tmp_path / "none.md"))
    assert code == 1 and "no configuration block" in err


def test_env_example_names_only_real_settings() -> None:
    known = {configdoc.env_name(name) for name in Settings.model_fields}
    names = re.findall(r"^#?\s*(SIGHTLINE_[A-Z0-9_]+)=", (REPO / ".env.example").read_text(), flags=re.M)
    assert names, ".env.example lists no variables"
    unknown = sorted(set(names) - known)
    assert not unknown, f".env.example names settings that don't exist: {unknown}"
    assert re.search(r"^SIGHTLINE_TELEGRAM_TOKEN=$", (REPO / ".env.example").read_text(), flags=re.M), (
        ".env.example must leave the token empty"
    )

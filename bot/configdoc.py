"""The configuration reference, generated from the Settings fields so the README cannot drift from the code."""

from __future__ import annotations

import difflib
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from bot.settings import Settings

START = "<!-- config:start -->"
END = "<!-- config:end -->"
HEADER = "| Variable | Type | Default | Description |\n| --- | --- | --- | --- |"


def env_name(field: str) -> str:
    """The environment variable of a Settings field."""
    prefix = Settings.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def _type_name(annotation: Any) -> tuple[str, bool]:
    """A reader's name for a field type, and whether None is allowed."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        name, _ = _type_name(args[0]) if len(args) == 1 else (" or ".join(_type_name(a)[0] for a in args), False)
        return name, True
    if origin is Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation)), False
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation), False
    names = {str: "text", int: "integer", float: "number", bool: "boolean", Path: "path", SecretStr: "secret"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation))), False


def _default(info: FieldInfo) -> str:
    default = info.default
    if default is PydanticUndefined:
        return "*(required)*"
    if default is None:
        return "*(unset)*"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, Enum):
        default = default.value
    if isinstance(default, SecretStr):
        return "*(secret)*"
    text = str(default)
    return f"`{text}`" if text != "" else '`""` (empty)'


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def config_table() -> str:
    """The Markdown table of every setting: variable, type, default and description."""
    rows = [HEADER]
    for name, info in Settings.model_fields.items():
        type_name, optional = _type_name(info.annotation)
        if optional:
            type_name += ", optional"
        rows.append(f"| `{env_name(name)}` | {type_name} | {_default(info)} | {_cell(info.description or '')} |")
    return "\n".join(rows) + "\n"


def config_block() -> str:
    """The table between its markers, as it appears in the README."""
    return f"{START}\n{config_table()}{END}\n"


def extract_block(text: str) -> str | None:
    """What stands between the markers (stripped), or None when they are missing or out of order."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start + len(START) : end].strip()


def replace_block(text: str) -> str:
    """`text` with the block between the markers regenerated; ValueError when the markers are missing."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {START} ... {END} block")
    return text[:start] + config_block().rstrip("\n") + text[end + len(END) :]


def compare(path: Path) -> tuple[bool, str]:
    """(up to date, explanation) for the block in the file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return False, f"cannot read {path}: {exc.strerror or exc}"
    current = extract_block(text)
    if current is None:
        return False, (
            f"{path} has no configuration block: add the lines {START} and {END} "
            f"and run `sightline config-docs --write {path}`"
        )
    wanted = config_table().strip()
    if current == wanted:
        return True, f"{path}: the configuration table is up to date"
    diff = "".join(
        difflib.unified_diff(
            (current + "\n").splitlines(keepends=True), (wanted + "\n").splitlines(keepends=True),
            fromfile=f"{path} (configuration block)", tofile="generated from bot/settings.py",
        )
    )
    return False, f"{diff}\n{path}: the configuration table is stale: run `sightline config-docs --write {path}`"

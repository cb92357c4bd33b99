"""What a problem looks like (``ConfigIssue``, ``ConfigError``) and the helpers that word it.
No pydantic here: the CLI catches these without loading the schema."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class ConfigIssue:
    """One problem: the file, the key path (``services.dns.checks[1].timeout``), and what
    is expected. ``key`` is "" for whole-file problems; line/column are set for syntax errors.
    """

    file: str
    key: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)


class ConfigNotFound(ConfigError):
    """The main configuration file does not exist (the CLI exits EX_NOINPUT)."""


def _fmt(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            out += f".{text}" if out else text
    return out


def _unknown_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if close:
        return "unknown key (did you mean " + " or ".join(f'"{c}"' for c in close) + "?)"
    return "unknown key; valid keys are " + ", ".join(valid)


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + '..."'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"

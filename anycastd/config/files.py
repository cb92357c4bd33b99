"""Reading the configuration: the main TOML file and its ``conf.d/*.toml`` drop-ins, parsed,
merged (drop-ins hold only services; a service lives in one file), then validated whole."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from anycastd.config.checks import _Rules
from anycastd.config.errors import (
    ConfigError,
    ConfigIssue,
    ConfigNotFound,
    _describe,
    _fmt,
    _unknown_key,
)
from anycastd.config.messages import _map_errors
from anycastd.config.scalars import NAME_RE
from anycastd.config.schema import (
    _SECTIONS,
    Config,
    ServiceConfig,
)

DROPIN_DIR = "conf.d"


def load_config(path: Path) -> Config:
    """Load *path* and the ``conf.d/*.toml`` drop-ins beside it.

    Raises ConfigNotFound if *path* does not exist, ConfigError listing every issue otherwise.
    """
    path = Path(path)
    try:
        main_bytes = path.read_bytes()
    except FileNotFoundError:
        raise ConfigNotFound([ConfigIssue(str(path), "", "configuration file not found")]) from None
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), "", f"cannot read: {exc.strerror}")]) from None
    documents: list[tuple[str, dict[str, Any]]] = []
    issues: list[ConfigIssue] = []
    main_doc = _parse(str(path), main_bytes, issues)
    documents.append((str(path), main_doc or {}))
    dropin_dir = path.parent / DROPIN_DIR
    names: list[str] = []
    if dropin_dir.exists():
        try:
            names = sorted(n for n in os.listdir(dropin_dir) if n.endswith(".toml"))
        except OSError as exc:  # unreadable, or not a directory: never skipped silently
            issues.append(ConfigIssue(str(dropin_dir), "", f"cannot list: {exc.strerror}"))
    for name in names:
        if name.startswith("."):
            continue
        file = dropin_dir / name
        # A drop-in that is not a regular file (a dangling symlink, a directory) is an
        # error, never skipped: skipping it would make a reload drop its services.
        if not file.is_file():
            issues.append(ConfigIssue(
                str(file), "", "is not a regular file (a dangling symlink or a directory?)"
            ))
            continue
        try:
            data = file.read_bytes()
        except OSError as exc:
            issues.append(ConfigIssue(str(file), "", f"cannot read: {exc.strerror}"))
            continue
        documents.append((str(file), _parse(str(file), data, issues) or {}))
    if issues:
        raise ConfigError(issues)
    return _build(documents)


def loads(text: str, *, source: str = "<string>") -> Config:
    """Validate one TOML document (no drop-ins). Handy for tests and tools."""
    issues: list[ConfigIssue] = []
    doc = _parse(source, text.encode(), issues)
    if issues:
        raise ConfigError(issues)
    return _build([(source, doc or {})])


def _parse(file: str, data: bytes, issues: list[ConfigIssue]) -> dict[str, Any] | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        issues.append(ConfigIssue(file, "", f"not UTF-8 text (byte {exc.start})"))
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line: int | None = getattr(exc, "lineno", None)
        column: int | None = getattr(exc, "colno", None)
        match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if match:
            line, column = int(match[1]), int(match[2])
            message = message[: match.start()]
        elif message.endswith("(at end of document)"):
            lines = text.splitlines() or [""]
            line, column = len(lines), len(lines[-1]) + 1
            message = message.removesuffix("(at end of document)").strip()
        message = getattr(exc, "msg", message)
        issues.append(
            ConfigIssue(file, "", f"TOML syntax error: {message}", line=line, column=column)
        )
        return None


def _build(documents: list[tuple[str, dict[str, Any]]]) -> Config:
    issues: list[ConfigIssue] = []
    main_file, main_doc = documents[0]

    for key in main_doc:
        if key not in (*_SECTIONS, "services"):
            issues.append(
                ConfigIssue(main_file, _fmt([key]), _unknown_key(key, [*_SECTIONS, "services"]))
            )
    raw_services: dict[str, dict[str, Any]] = {}
    owners: dict[str, str] = {}
    for file, doc in documents:
        if file != main_file:
            for key in doc:
                if key != "services":
                    issues.append(
                        ConfigIssue(
                            file,
                            _fmt([key]),
                            f"drop-in files may only define [services.NAME] tables; "
                            f"put [{key}] in {main_file}",
                        )
                    )
        doc_services = doc.get("services", {})
        if not isinstance(doc_services, dict):
            issues.append(
                ConfigIssue(
                    file,
                    "services",
                    f"expected [services.NAME] tables, got {_describe(doc_services)}",
                )
            )
            continue
        for name, raw in doc_services.items():
            key = _fmt(["services", name])
            if name in owners:
                issues.append(
                    ConfigIssue(file, key, f'service "{name}" is already defined in {owners[name]}')
                )
                continue
            owners[name] = file
            if not NAME_RE.fullmatch(name):
                issues.append(
                    ConfigIssue(
                        file,
                        key,
                        f'"{name}" is not a valid service name: use 1-63 of '
                        "a-z 0-9 _ . - starting with a letter or digit",
                    )
                )
                continue
            if isinstance(raw, dict) and "name" in raw:
                issues.append(
                    ConfigIssue(
                        file,
                        _fmt(["services", name, "name"]),
                        "unknown key: the service name is the table name, remove this key",
                    )
                )
                continue
            raw_services[name] = raw

    sections: dict[str, Any] = {}
    for section, model in _SECTIONS.items():
        if section not in main_doc:
            continue
        try:
            sections[section] = model.model_validate(main_doc[section])
        except ValidationError as exc:
            issues.extend(_map_errors(exc, model, [section], main_file))

    services: dict[str, ServiceConfig] = {}
    for name, raw in raw_services.items():
        data = {**raw, "name": name} if isinstance(raw, dict) else raw
        try:
            services[name] = ServiceConfig.model_validate(data)
        except ValidationError as exc:
            issues.extend(_map_errors(exc, ServiceConfig, ["services", name], owners[name]))

    rules = _Rules(main_file, owners)
    rules.check_sections(main_doc, sections)
    for name, service in services.items():
        raw = raw_services[name]
        rules.check_service(service, raw, sections.get("bgp"))
    rules.check_shared_prefixes(services)
    issues.extend(rules.issues)

    if issues:
        order = {file: i for i, (file, _) in enumerate(documents)}
        issues.sort(key=lambda i: order.get(i.file, len(order)))
        raise ConfigError(issues)
    return Config.model_validate(
        {
            **sections,
            "services": services,
            "sources": tuple(Path(f) for f, _ in documents),
            "service_sources": {name: Path(owners[name]) for name in services},
        }
    )

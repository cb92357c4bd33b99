"""Structured logging: one event a line, JSON or logfmt, for journald and Loki.

Code logs with the standard library: ``log.info("transition", extra={"fields": {...}})`` or
the ``event()`` helper. The formatter renders the message as the ``event`` key and merges the
structured fields, so a line reads ``ts=... level=info event=transition service=dns to=up``.
Configuration happens once, in the CLI; library code never configures logging.

Under journald (stderr is the journal stream: ``JOURNAL_STREAM`` names its device:inode) each
line starts with the syslog priority as ``<N>`` (journald's SyslogLevelPrefix, on by
default), so ``journalctl -p warning`` works, and carries no ``ts`` (the journal stamps every
line itself). On a terminal, a file or a pipe the lines keep their timestamp and no prefix.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, Final, Literal, TextIO

LogFormat = Literal["json", "logfmt"]

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "fields",
}


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one structured event."""
    logger.log(level, name, extra={"fields": fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    extra = getattr(record, "fields", None)
    if isinstance(extra, Mapping):
        out.update(extra)
    for key, value in record.__dict__.items():
        if key not in _RESERVED and not key.startswith("_"):
            out[key] = value
    return out


def _timestamp(record: logging.LogRecord) -> str:
    ms = int(record.msecs)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z"


class JsonFormatter(logging.Formatter):
    def __init__(self, *, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": _timestamp(record)} if self.timestamps else {}
        doc |= {
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        doc.update(_fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


#: a logfmt value with one of these (or empty) is quoted, JSON-style
_NEEDS_QUOTES: Final = re.compile(r'[ ="\\\n\t]|^$')


def _logfmt_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif value is None:  # the common scalars without json.dumps, spelled as it spells them
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = int.__repr__(value)
    else:
        text = json.dumps(value, default=str)
    # one regex scan, not a generator per character: 2,000 lines a 1,000-prefix start
    return json.dumps(text) if _NEEDS_QUOTES.search(text) else text


class LogfmtFormatter(logging.Formatter):
    def __init__(self, *, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, Any]] = [("ts", _timestamp(record))] if self.timestamps else []
        pairs += [
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("event", record.getMessage()),
        ]
        pairs.extend(_fields(record).items())
        if record.exc_info:
            pairs.append(("exc", self.formatException(record.exc_info)))
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in pairs)


#: logging level -> syslog priority (sd-daemon(3): <3> err, <4> warning, <6> info, <7> debug)
_PRIORITY: Final = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4,
                    logging.INFO: 6, logging.DEBUG: 7}


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (a custom level takes the next lower one)."""
    for level in sorted(_PRIORITY, reverse=True):
        if levelno >= level:
            return _PRIORITY[level]
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>`` + the line of ``inner`` (built without its timestamp)."""

    def __init__(self, inner: JsonFormatter | LogfmtFormatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{priority(record.levelno)}>{self.inner.format(record)}"


def is_journal_stream(stream: TextIO) -> bool:
    """True when ``stream`` is the journal stream systemd connected (JOURNAL_STREAM equals
    its ``device:inode``; a redirect to a file or a pipe in between makes it False)."""
    dev, sep, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or no fd (StringIO)
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def formatter(fmt: LogFormat, stream: TextIO) -> logging.Formatter:
    """The formatter for ``stream``: ``<N>``-prefixed, without timestamps, under journald."""
    if is_journal_stream(stream):
        inner = JsonFormatter(timestamps=False) if fmt == "json" else LogfmtFormatter(
            timestamps=False)
        return JournalFormatter(inner)
    return JsonFormatter() if fmt == "json" else LogfmtFormatter()


def configure(fmt: LogFormat, level: str, stream: TextIO | None = None) -> None:
    """Send every ``anycastd`` and ``healthchecks`` record to one stream in one format."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter(fmt, out))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())

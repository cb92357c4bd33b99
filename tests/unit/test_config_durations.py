"""Duration strings: units, compound forms, and the refusal of bare numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anycastd.durations import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1m30s", 90.0),
        ("0s", 0.0),
        (" 3s ", 3.0),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [2, 2.5, 0])
def test_bare_numbers_are_rejected_with_a_hint(value: float) -> None:
    with pytest.raises(DurationError, match=f'write "{value}s"'):
        parse_duration(value)


@pytest.mark.parametrize("text", ["2", "1.5"])
def test_unitless_strings_are_rejected_with_a_hint(text: str) -> None:
    with pytest.raises(DurationError, match=f'write "{text}s"'):
        parse_duration(text)


@pytest.mark.parametrize("value", ["", "s", "2 s", "-1s", "2sec", "1y", True, None, [1]])
def test_garbage_is_rejected(value: object) -> None:
    with pytest.raises(DurationError, match="expected a duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.25, "250ms"), (2, "2s"), (90, "90s"), (600, "10m"), (86400 * 7, "7d")],
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**9))
def test_format_round_trips_whole_milliseconds(ms: int) -> None:
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)

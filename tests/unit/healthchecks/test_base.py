"""The shared run contract: deadline, error mapping, cancellation, the Probe protocol."""

from __future__ import annotations

import asyncio
import time

import pytest

import healthchecks
from healthchecks import Probe, ProbeResult, Status
from healthchecks._base import Stage, format_seconds, guarded, one_line


async def test_body_outcome_is_returned_with_latency() -> None:
    async def body(stage: Stage) -> tuple[Status, str]:
        await asyncio.sleep(0.02)
        return Status.FAIL, "nope"

    result = await guarded(body, 1.0)
    assert (result.status, result.reason) == (Status.FAIL, "nope")
    assert 0.02 <= result.latency < 0.5


async def test_deadline_gives_timeout_naming_the_stage() -> None:
    async def body(stage: Stage) -> tuple[Status, str]:
        stage.name = "waiting for godot"
        await asyncio.sleep(10)
        return Status.OK, ""

    start = time.monotonic()
    result = await guarded(body, 0.1)
    assert result.status is Status.TIMEOUT
    assert result.reason == "timed out after 100ms (waiting for godot)"
    assert time.monotonic() - start < 0.5


async def test_kernel_timeout_error_is_a_failure_not_our_timeout() -> None:
    async def body(stage: Stage) -> tuple[Status, str]:
        stage.name = "connect"
        raise TimeoutError(110, "Connection timed out")

    result = await guarded(body, 1.0)
    assert result.status is Status.FAIL
    assert result.reason == "connect: Connection timed out"


async def test_os_error_is_a_failure() -> None:
    async def body(stage: Stage) -> tuple[Status, str]:
        raise ConnectionResetError(104, "reset")

    result = await guarded(body, 1.0)
    assert result.status is Status.FAIL
    assert result.reason == "starting: Connection reset by peer"


async def test_unexpected_exception_is_an_error_not_a_raise() -> None:
    async def body(stage: Stage) -> tuple[Status, str]:
        raise KeyError("bug")

    result = await guarded(body, 1.0)
    assert result.status is Status.ERROR
    assert "KeyError" in result.reason


async def test_outside_cancellation_propagates() -> None:
    async def body(stage: Stage) -> tuple[Status, str]:
        await asyncio.sleep(10)
        return Status.OK, ""

    task = asyncio.create_task(guarded(body, 5.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_reason_is_one_bounded_line() -> None:
    async def body(stage: Stage) -> tuple[Status, str]:
        return Status.FAIL, "line one\nline two " + "x" * 500

    result = await guarded(body, 1.0)
    assert "\n" not in result.reason
    assert len(result.reason) == 200
    assert result.reason.startswith("line one line two")


def test_one_line_keeps_short_text() -> None:
    assert one_line("  a \t b ") == "a b"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (1.5, "1.5s"), (90, "90s"), (7200, "2.0h"), (7 * 86400, "7.0d")],
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_every_probe_satisfies_the_protocol(tmp_path: object) -> None:
    probes: list[object] = [
        healthchecks.TcpProbe("127.0.0.1", 1),
        healthchecks.HttpProbe("http://127.0.0.1/"),
        healthchecks.DnsProbe("127.0.0.1", "example.com"),
        healthchecks.TlsProbe("127.0.0.1", 443),
        healthchecks.ExecProbe(("true",)),
        healthchecks.FileProbe("/nonexistent"),
    ]
    for probe in probes:
        assert isinstance(probe, Probe)
        hash(probe)  # frozen values: usable as dict keys by a scheduler


def test_result_is_a_frozen_value() -> None:
    result = ProbeResult(Status.OK, 0.1, "")
    assert result.ok
    with pytest.raises(AttributeError):
        result.status = Status.FAIL  # type: ignore[misc]


def test_pairs_options_accept_mappings_and_stay_hashable() -> None:
    http = healthchecks.HttpProbe("http://x/", headers={"X-A": "1"})  # type: ignore[arg-type]
    exe = healthchecks.ExecProbe(["/bin/true"], env={"A": "b"})  # type: ignore[arg-type]
    assert http.headers == (("X-A", "1"),)
    assert exe.env == (("A", "b"),)
    assert len({http, exe}) == 2  # hashable

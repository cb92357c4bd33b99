"""FileProbe: maintenance flags and health files."""

from __future__ import annotations

from pathlib import Path

import pytest

from healthchecks import FileProbe, Status


async def test_present_file_is_ok(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    flag.touch()
    result = await FileProbe(str(flag)).run(1.0)
    assert (result.status, result.reason) == (Status.OK, "present")


async def test_missing_file_fails_when_expected_present(tmp_path: Path) -> None:
    result = await FileProbe(str(tmp_path / "flag")).run(1.0)
    assert result.status is Status.FAIL
    assert result.reason == f"{tmp_path / 'flag'} is absent"


async def test_absent_expectation(tmp_path: Path) -> None:
    flag = tmp_path / "maintenance"
    probe = FileProbe(str(flag), expect="absent")
    assert (await probe.run(1.0)).status is Status.OK
    flag.touch()
    assert (await probe.run(1.0)).status is Status.FAIL


async def test_dangling_symlink_counts_as_present(tmp_path: Path) -> None:
    link = tmp_path / "flag"
    link.symlink_to(tmp_path / "nowhere")
    assert (await FileProbe(str(link)).run(1.0)).status is Status.OK


async def test_file_as_parent_directory_means_absent(tmp_path: Path) -> None:
    (tmp_path / "file").touch()
    probe = FileProbe(str(tmp_path / "file" / "flag"), expect="absent")
    assert (await probe.run(1.0)).status is Status.OK


async def test_stat_error_other_than_missing_is_an_error(tmp_path: Path) -> None:
    # ENAMETOOLONG: the probe cannot tell whether the flag exists, so it must not say.
    result = await FileProbe(str(tmp_path / ("x" * 5000))).run(1.0)
    assert result.status is Status.ERROR
    assert "File name too long" in result.reason


def test_bad_expectation_is_rejected() -> None:
    with pytest.raises(ValueError, match="expect"):
        FileProbe("/x", expect="maybe")  # type: ignore[arg-type]

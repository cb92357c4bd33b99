"""The managed ExaBGP's restart schedule (pure) and its settings."""

from __future__ import annotations

import pytest

from anycastd.bgp.supervisor import restart_delay


@pytest.mark.parametrize(
    ("failures", "delay"),
    [
        (0, 0.0),  # never exited yet
        (1, 0.0),  # the first exit (or the first after a stable run): restart at once
        (2, 0.5),  # a second exit in a row: back off
        (3, 1.0),
        (4, 2.0),
        (8, 30.0),  # capped
        (50, 30.0),
    ],
)
def test_the_first_exit_restarts_at_once_and_a_crash_loop_backs_off(
    failures: int, delay: float
) -> None:
    assert restart_delay(failures, (0.5, 30.0)) == delay

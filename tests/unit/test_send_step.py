"""How much of a file the mirror hands to one sendfile step (mirror.next_send_step)."""

from __future__ import annotations

import pytest

from modelfetch.mirror import next_send_step

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("sent", "seconds", "io_timeout", "expected"),
    [
        (MiB, 0.0, 60.0, 32 * MiB),  # no measurable time: the largest step
        (MiB, 0.001, 60.0, 32 * MiB),  # 1 GB/s reader: capped at 32 MiB
        (MiB, 1.0, 60.0, int(MiB * 60 / 8)),  # 1 MiB/s: what it takes in 7.5 s
        (1024, 1.0, 60.0, MiB),  # a trickling reader never gets less than 1 MiB
        (MiB, 0.5, 8.0, 2 * MiB),  # a short io_timeout keeps steps short
    ],
)
def test_step_follows_the_clients_rate(
    sent: int, seconds: float, io_timeout: float, expected: int
) -> None:
    assert next_send_step(sent, seconds, io_timeout) == expected


def test_a_step_ends_within_io_timeout_if_the_client_slows_down_eightfold() -> None:
    for rate in (10**4, 10**6, 10**8):
        step = next_send_step(rate, 1.0, 60.0)
        if step > 1024 * 1024:  # the floor is for readers slower than that
            assert step / (rate / 8) <= 60.0

"""The retry policy (core/retry.py): back-off, Retry-After, budgets, restarts."""

from __future__ import annotations

import pytest

from modelfetch.core.retry import (
    Fatal,
    GiveUp,
    Restart,
    RestartError,
    Retry,
    RetryableError,
    RetryCount,
    RetryPolicy,
    StartOver,
    Wait,
    decide,
)

POLICY = RetryPolicy(max_retries=3, backoff=1.0, cap=8.0, max_restarts=2, max_progress_attempts=2)


@pytest.mark.parametrize(
    "failures, after, draw, delay",
    [
        (1, None, 0.0, 0.5),
        (1, None, 0.999, 0.9995),
        (2, None, 0.0, 1.0),
        (3, None, 0.5, 3.0),
        (10, None, 1.0, 8.0),  # capped
        (1, 5.0, 0.0, 5.0),  # a server's Retry-After is honoured...
        (1, 600.0, 0.0, 8.0),  # ...up to the cap
        (4, 0.0, 0.0, 4.0),  # a shorter Retry-After does not cut the back-off
    ],
)
def test_next_delay(failures: int, after: float | None, draw: float, delay: float) -> None:
    assert POLICY.next_delay(failures, after, draw) == pytest.approx(delay)


def run(outcomes: list[Retry | Restart | Fatal]) -> list[object]:
    count, steps = RetryCount(), []
    for outcome in outcomes:
        count, step = decide(POLICY, count, outcome, 0.0)
        steps.append(step)
    return steps


@pytest.mark.parametrize(
    "outcomes, last",
    [
        ([Retry()], Wait(0.5)),
        ([Retry()] * 3, Wait(2.0)),
        ([Retry()] * 4, GiveUp("failed after 4 attempt(s)")),
        ([Retry(after=3.0)], Wait(3.0)),
        # progress does not use up max_retries, but only max_progress_attempts times
        ([Retry(progressed=True)] * 2 + [Retry()] * 3, Wait(2.0)),
        ([Retry(progressed=True)] * 5 + [Retry()], GiveUp("failed after 4 attempt(s)")),
        ([Restart("x")], StartOver(False)),
        ([Restart("x", single_stream=True)], StartOver(True)),
        ([Restart("x")] * 3, GiveUp("restarted 2 times")),
        ([Fatal("no")], GiveUp("no")),
    ],
)
def test_decide(outcomes: list[Retry | Restart | Fatal], last: object) -> None:
    assert run(outcomes)[-1] == last


def test_no_retries_means_progress_counts_too() -> None:
    policy = RetryPolicy(max_retries=0)
    count, step = decide(policy, RetryCount(), Retry(progressed=True), 0.5)
    assert isinstance(step, GiveUp) and count.failures == 1


def test_every_sequence_ends() -> None:
    """Whatever attempts report, the budgets end the loop."""
    count, step = RetryCount(), None
    for _ in range(1000):
        count, step = decide(POLICY, count, Retry(progressed=True), 0.0)
        if isinstance(step, GiveUp):
            break
    assert isinstance(step, GiveUp)


def test_exceptions_carry_their_outcome() -> None:
    assert RetryableError("x", 2.0, progressed=True).outcome == Retry(True, 2.0)
    assert RestartError("why", single_stream=True).outcome == Restart("why", True)

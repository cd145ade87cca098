"""The retry vocabulary: what a failed attempt asks for, and the policy that answers.

An attempt ends in one of three ways worth naming:

* ``Retry(progressed, after)``: try again after a back-off (a 5xx, a lost connection).
  ``progressed`` says the attempt moved bytes forward: such retries do not use up
  ``max_retries`` (a flaky link that keeps delivering should finish), but only
  ``max_progress_attempts`` times, so every loop stays bounded. ``after`` is a server's
  Retry-After, capped like the back-off.
* ``Restart(reason)``: the partial file cannot be trusted; discard it and start over (at
  most ``max_restarts`` times).
* ``Fatal(reason)``: no attempt can fix this.

The loop that sleeps and sends requests lives in fetch/http.py; this module decides with
the random draw passed in, so the whole policy is testable as a table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Retry:
    progressed: bool = False
    after: float | None = None


@dataclass(frozen=True)
class Restart:
    reason: str
    single_stream: bool = False  # the server's ranges cannot be checked: use one stream


@dataclass(frozen=True)
class Fatal:
    reason: str


Outcome = Retry | Restart | Fatal


class RetryableError(Exception):
    """A failure worth another attempt (5xx, 429, connection trouble)."""

    def __init__(
        self, message: str, retry_after: float | None = None, progressed: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.progressed = progressed

    @property
    def outcome(self) -> Retry:
        return Retry(self.progressed, self.retry_after)


class RestartError(Exception):
    """The partial file cannot be trusted; discard it and start from zero."""

    def __init__(self, reason: str, single_stream: bool = False) -> None:
        super().__init__(reason)
        self.single_stream = single_stream

    @property
    def outcome(self) -> Restart:
        return Restart(str(self), self.single_stream)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff: float = 0.5  # first back-off in seconds; doubles each failure
    cap: float = 30.0  # the longest back-off, also the cap on a server's Retry-After
    max_restarts: int = 3
    max_progress_attempts: int = 50

    def next_delay(self, failures: int, after: float | None, draw: float) -> float:
        """Exponential back-off with full jitter (``draw`` in [0, 1) spreads a herd of
        retrying clients), at least a server's Retry-After, never above ``cap``."""
        ceiling = min(self.cap, self.backoff * 2.0 ** max(0, failures - 1))
        delay = ceiling / 2 + draw * (ceiling / 2)
        if after is not None:
            delay = min(max(delay, after), self.cap)
        return delay


@dataclass(frozen=True)
class RetryCount:
    """What the attempts so far have used up."""

    failures: int = 0
    progress_attempts: int = 0
    restarts: int = 0


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class GiveUp:
    reason: str


@dataclass(frozen=True)
class StartOver:
    single_stream: bool


Step = Wait | GiveUp | StartOver


def decide(
    policy: RetryPolicy, count: RetryCount, outcome: Outcome, draw: float
) -> tuple[RetryCount, Step]:
    """The next step after an attempt ended with ``outcome``, and the updated count."""
    if isinstance(outcome, Fatal):
        return count, GiveUp(outcome.reason)
    if isinstance(outcome, Restart):
        count = replace(count, restarts=count.restarts + 1)
        if count.restarts > policy.max_restarts:
            return count, GiveUp(f"restarted {policy.max_restarts} times")
        return count, StartOver(outcome.single_stream)
    if (
        outcome.progressed
        and policy.max_retries
        and count.progress_attempts < policy.max_progress_attempts
    ):
        count = replace(count, progress_attempts=count.progress_attempts + 1)
    else:
        count = replace(count, failures=count.failures + 1)
    if count.failures > policy.max_retries:
        return count, GiveUp(f"failed after {count.failures} attempt(s)")
    return count, Wait(policy.next_delay(count.failures or 1, outcome.after, draw))

"""Resume planning and judging (core/resume.py): pure tables, no files, no sockets."""

from __future__ import annotations

import pytest

from modelfetch.core.resume import (
    PartState,
    ResumePlan,
    judge_response,
    parse_part_state,
    part_state_json,
    plan_resume,
)

KEY = "a" * 64
SEGS = ((0, 1000, 400),)
STATE = PartState(KEY, '"v1"', "Tue, 14 Nov 2023 22:13:20 GMT", 1000, None, SEGS)
PLAN = ResumePlan(400, {"Range": "bytes=400-", "If-Range": '"v1"'}, STATE)


@pytest.mark.parametrize(
    "content_range, length, etag, decision",
    [
        ("bytes 400-999/1000", "600", '"v1"', "append"),
        ("bytes 400-999/*", "600", '"v1"', "append"),
        ("bytes 400-999/1000", "600", None, "restart"),  # 206 without the recorded ETag
        ("bytes 400-999/1000", "600", 'W/"v1"', "restart"),  # weak is not the strong tag
        ("bytes 401-999/1000", "599", '"v1"', "restart"),  # wrong start
        ("bytes 400-998/1000", "599", '"v1"', "restart"),  # stops short of the end
        ("bytes 400-1999/2000", "1600", '"v1"', "restart"),  # size changed
        ("bytes 400-999/1000", "10", '"v1"', "restart"),  # length disagrees
        ("bytes 400-999/1000", "600", '"v2"', "restart"),  # etag changed
        ("bytes 400-399/1000", "0", '"v1"', "restart"),  # end before start
        (None, "600", '"v1"', "restart"),
        ("bytes 400-" + "9" * 30 + "/1000", "600", '"v1"', "restart"),  # absurd number
        ("items 400-999/1000", "600", '"v1"', "restart"),
        ("bytes  400-999/1000\r\nX: y", "600", '"v1"', "restart"),
    ],
)
def test_judge_206(content_range: str | None, length: str, etag: str | None, decision: str) -> None:
    assert judge_response(PLAN, 206, content_range, length, etag).decision == decision


@pytest.mark.parametrize(
    "plan, status, content_range, length, etag, decision, total",
    [
        (PLAN, 200, None, "1000", '"v2"', "truncate", 1000),
        (PLAN, 416, "bytes */1000", "0", None, "restart", None),
        (PLAN, 500, None, None, None, "restart", None),
        (ResumePlan(0, {}, None), 206, "bytes 0-9/10", "10", None, "restart", None),
        (ResumePlan(0, {}, None), 200, None, "9" * 40, None, "truncate", None),  # absurd
    ],
)
def test_judge_other_statuses(
    plan: ResumePlan,
    status: int,
    content_range: str | None,
    length: str | None,
    etag: str | None,
    decision: str,
    total: int | None,
) -> None:
    verdict = judge_response(plan, status, content_range, length, etag)
    assert (verdict.decision, verdict.total) == (decision, total)


WEAK = PartState(KEY, 'W/"v1"', None, 1000, None, SEGS)


@pytest.mark.parametrize(
    "size, state, sha, enabled, offset, headers",
    [
        (400, STATE, None, True, 400, {"Range": "bytes=400-", "If-Range": '"v1"'}),
        (400, WEAK, None, True, 0, {}),  # a weak ETag can't be If-Range
        (400, WEAK, "b" * 64, True, 400, {"Range": "bytes=400-"}),  # the pin checks it
        (400, PartState(KEY, '"v1"', None, 1000, "c" * 64, SEGS), "b" * 64, True, 0, {}),
        (400, STATE, None, False, 0, {}),  # resume turned off
        (400, PartState(KEY, '"v1"', None, 400, None, ((0, 400, 400),)), None, True, 0, {}),
        (400, PartState(KEY, '"v1"', None, 1000, None, ((0, 1000, 900),)), None, True, 0, {}),
        (None, STATE, None, True, 0, {}),  # no part file at all
        (400, PartState(KEY, '"v1"', None, 1000, None), None, True, 0, {}),
    ],
)
def test_plan_resume(
    size: int | None,
    state: PartState,
    sha: str | None,
    enabled: bool,
    offset: int,
    headers: dict[str, str],
) -> None:
    plan = plan_resume(size, state, sha, enabled)
    assert (plan.offset, plan.headers) == (offset, headers)


def test_plan_drops_a_state_that_claims_missing_bytes() -> None:
    lost = PartState(KEY, '"v1"', None, 1000, None, ((0, 1000, 900),))
    assert plan_resume(400, lost, None, True).state is None


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b'{"cache_key": 5}', b'{"cache_key": "' + b"b" * 64 + b'"}', b"\xff" * 10],
)
def test_hostile_part_state_means_no_state(raw: bytes) -> None:
    assert parse_part_state(raw, KEY) is None


def test_hostile_part_state_fields_are_dropped() -> None:
    raw = (
        f'{{"cache_key": "{KEY}", "etag": 5, "total": -3, "last_modified": "x", '
        '"segments": [[0, null, 7]]}'
    ).encode()
    state = parse_part_state(raw, KEY)
    assert state is not None and state.etag is None and state.total is None


@pytest.mark.parametrize(
    "segments",
    [
        "[]",
        "[[0, 500, 10]]",  # does not reach total
        "[[0, 500, 10], [600, 1000, 600]]",  # gap
        "[[0, 500, 10], [400, 1000, 400]]",  # overlap
        "[[0, 500, 600], [500, 1000, 500]]",  # pos beyond end
        "[[0, 500, 10], [500, 1000, 499]]",  # pos before start
        "[[0, 1000, true]]",
        "[[0, 1000]]",
        '"0-1000"',
        "[[0, null, 5], [5, 1000, 5]]",  # open-ended segment must be alone
    ],
)
def test_hostile_segments_are_refused(segments: str) -> None:
    raw = f'{{"cache_key": "{KEY}", "total": 1000, "segments": {segments}}}'.encode()
    assert parse_part_state(raw, KEY) is None


@pytest.mark.parametrize(
    "etag, stored",
    [('"v1"', '"v1"'), ('"' + "e" * 2000 + '"', None), ('"a\x1bb"', None)],
)
def test_written_state_reads_back(etag: str, stored: str | None) -> None:
    state = PartState(KEY, etag, None, 1000, None, SEGS)
    back = parse_part_state(part_state_json(state), KEY)
    assert back is not None and back.etag == stored and back.segments == SEGS

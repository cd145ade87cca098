"""Unit rules of resume.py and header parsing, with hostile values."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from modelfetch import EnsureOptions, ModelSource, ensure
from modelfetch.http_client import parse_retry_after
from modelfetch.resume import PartState, ResumePlan, judge_response, load_part_state, plan_resume

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


def test_judge_other_statuses() -> None:
    assert judge_response(PLAN, 200, None, "1000", '"v2"').decision == "truncate"
    assert judge_response(PLAN, 416, "bytes */1000", "0", None).decision == "restart"
    fresh = ResumePlan(0, {}, None)
    assert judge_response(fresh, 206, "bytes 0-9/10", "10", None).decision == "restart"
    assert judge_response(fresh, 200, None, "9" * 40, None).total is None  # absurd length


def test_plan_requires_a_validator_or_sha(tmp_path: Path) -> None:
    part = tmp_path / "m.part"
    part.write_bytes(b"x" * 400)
    assert plan_resume(part, STATE, None, True).headers["If-Range"] == '"v1"'
    weak = PartState(KEY, 'W/"v1"', None, 1000, None, SEGS)
    assert plan_resume(part, weak, None, True).offset == 0  # weak ETag can't be If-Range
    assert plan_resume(part, weak, "b" * 64, True).headers == {"Range": "bytes=400-"}
    other_sha = PartState(KEY, '"v1"', None, 1000, "c" * 64, SEGS)
    assert plan_resume(part, other_sha, "b" * 64, True).offset == 0
    assert plan_resume(part, STATE, None, False).offset == 0
    done = PartState(KEY, '"v1"', None, 400, None, ((0, 400, 400),))
    assert plan_resume(part, done, None, True).offset == 0  # nothing left for one stream
    lost = PartState(KEY, '"v1"', None, 1000, None, ((0, 1000, 900),))
    assert plan_resume(part, lost, None, True).state is None  # sidecar claims missing bytes
    assert plan_resume(part, PartState(KEY, '"v1"', None, 1000, None), None, True).offset == 0


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[]", b'{"cache_key": 5}', b'{"cache_key": "' + b"b" * 64 + b'"}', b"\xff" * 10],
)
def test_hostile_part_state_means_no_state(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "m.part.json"
    path.write_bytes(raw)
    assert load_part_state(path, KEY) is None


def test_hostile_part_state_fields_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "m.part.json"
    path.write_text(
        f'{{"cache_key": "{KEY}", "etag": 5, "total": -3, "last_modified": "x", '
        '"segments": [[0, null, 7]]}'
    )
    state = load_part_state(path, KEY)
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
def test_hostile_segments_are_refused(tmp_path: Path, segments: str) -> None:
    path = tmp_path / "m.part.json"
    path.write_text(f'{{"cache_key": "{KEY}", "total": 1000, "segments": {segments}}}')
    assert load_part_state(path, KEY) is None


def test_corrupt_part_sidecar_restarts_download(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str, cache_dir: Path
) -> None:
    res = Resource(blob, drop_after=[800_000])
    url = server.add("/p/model.gguf", res)
    with pytest.raises(Exception):
        ensure(url, opts, max_retries=0)
    src = ModelSource.parse(url)
    (cache_dir / "entries" / src.entry_dir_name / "model.gguf.part.json").write_bytes(b"\x00{")
    assert ensure(url, opts).sha256 == blob_sha
    assert server.requests_for("/p/model.gguf")[-1].headers.get("Range") is None


@pytest.mark.parametrize(
    "value, expected",
    [("5", 5.0), ("0", 0.0), (None, None), ("", None), ("soon", None), ("-3", None),
     ("9" * 40, 86400.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)  # fmt: skip
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected

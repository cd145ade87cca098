"""hf://owner/repo:QUANT picks a GGUF by tag from the hub's file list, remembers the choice,
and then works with zero requests, offline too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from modelfetch import CacheMissError, EnsureOptions, InvalidSourceError, ensure
from modelfetch.quant import choose_file

FILES = [
    "README.md",
    "model-Q8_0.gguf",
    "model-Q4_K_M.gguf",
    "mmproj-model-Q4_K_M.gguf",
    "Q5_K_M/model-Q5_K_M-00001-of-00002.gguf",
    "Q5_K_M/model-Q5_K_M-00002-of-00002.gguf",
    "model-Q4_K_S.gguf",
]


@pytest.fixture
def hub(server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> FaultServer:
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    page1 = [{"type": "file", "path": p} for p in FILES[:4]] + [
        {"type": "directory", "path": "Q5_K_M"}
    ]
    page2 = [{"type": "file", "path": p} for p in FILES[4:]]
    server.add(
        "/api/models/o/r/tree/main",
        Resource(
            json.dumps(page1).encode(),
            headers={"Link": f'<{server.url("/api/next-page")}>; rel="next"'},
        ),
    )
    server.add("/api/next-page", Resource(json.dumps(page2).encode()))
    for i, path in enumerate(FILES):
        server.add(f"/o/r/resolve/main/{path}", Resource(random_bytes(1000 + i, seed=i)))
    return server


def test_tag_picks_the_matching_file(hub: FaultServer, opts: EnsureOptions) -> None:
    entry = ensure("hf://o/r:q4_k_m", opts)  # case-insensitive, mmproj skipped
    assert entry.path.name == "model-Q4_K_M.gguf"
    assert entry.path.read_bytes() == random_bytes(1002, seed=2)


def test_no_tag_means_q4_k_m_like_llama_cpp(hub: FaultServer, opts: EnsureOptions) -> None:
    assert ensure("hf://o/r", opts).path.name == "model-Q4_K_M.gguf"


def test_a_split_quant_brings_its_set(hub: FaultServer, opts: EnsureOptions) -> None:
    entry = ensure("hf://o/r:Q5_K_M", opts)  # listed on the second page
    assert entry.set_path is not None
    assert sorted(p.name for p in entry.set_path.parent.iterdir()) == [
        "model-Q5_K_M-00001-of-00002.gguf",
        "model-Q5_K_M-00002-of-00002.gguf",
    ]


def test_resolution_is_remembered_for_zero_request_and_offline_use(
    hub: FaultServer, opts: EnsureOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ensure("hf://o/r:Q8_0", opts)
    before = len(hub.log)
    assert ensure("hf://o/r:Q8_0", opts).path == first.path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ensure("hf://o/r:Q8_0", opts).path == first.path
    assert len(hub.log) == before
    with pytest.raises(CacheMissError, match="resolve it once"):
        ensure("hf://o/r:Q4_K_S", opts)


def test_unknown_tag_lists_what_exists(hub: FaultServer, opts: EnsureOptions) -> None:
    with pytest.raises(InvalidSourceError, match=r"tags found: Q4_K_M, Q4_K_S, Q5_K_M, Q8_0"):
        ensure("hf://o/r:IQ2_XXS", opts)


def test_hostile_ref_file_is_ignored(
    hub: FaultServer, opts: EnsureOptions, cache_dir: Path
) -> None:
    ensure("hf://o/r:Q8_0", opts)
    (ref,) = (cache_dir / "refs").iterdir()
    ref.write_text(json.dumps({"identity": "hfq:o/r@main:Q8_0", "path": "../../etc/passwd"}))
    assert ensure("hf://o/r:Q8_0", opts).path.name == "model-Q8_0.gguf"  # re-resolved


@pytest.mark.parametrize(
    "paths, tag, expected",
    [
        (["a-Q4_K_M.gguf", "a-Q4_K_M-00001-of-00002.gguf"], "Q4_K_M", "a-Q4_K_M.gguf"),
        (["a-Q4_K_M-00002-of-00002.gguf", "a-Q4_K_M-00001-of-00002.gguf"], "Q4_K_M",
         "a-Q4_K_M-00001-of-00002.gguf"),
        (["a-Q4_K_MX.gguf"], "Q4_K_M", None),
        (["a-q4_k_m.GGUF"], "Q4_K_M", "a-q4_k_m.GGUF"),
        (["x/Q4_K_M/a.gguf"], "Q4_K_M", "x/Q4_K_M/a.gguf"),
    ],
)  # fmt: skip
def test_choose_file(paths: list[str], tag: str, expected: str | None) -> None:
    assert choose_file(paths, tag) == expected

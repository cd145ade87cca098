"""hf://owner/repo:QUANT picks a GGUF by tag from the hub's file list, remembers the choice,
and then works with zero requests, offline too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator
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
def repo(hub: HubEmulator, hub_opts: EnsureOptions) -> EnsureOptions:
    """o/r on the emulated hub, listed 3 entries per page (so the listing takes pages)."""
    hub.page_size = 3
    hub.create_repo("o/r", {path: random_bytes(1000 + i, seed=i) for i, path in enumerate(FILES)})
    return hub_opts


def test_tag_picks_the_matching_file(hub: HubEmulator, repo: EnsureOptions) -> None:
    entry = ensure("hf://o/r:q4_k_m", repo)  # case-insensitive, mmproj skipped
    assert entry.path.name == "model-Q4_K_M.gguf"
    assert entry.path.read_bytes() == random_bytes(1002, seed=2)
    # main resolved once; listed (3 pages) and downloaded at that commit
    commit = hub.resolve("o/r", "main")
    assert commit is not None and entry.commit == commit.oid
    assert len(hub.hub.requests("GET", "/api/models/o/r/revision/main")) == 1
    assert len(hub.hub.requests("GET", f"/api/models/o/r/tree/{commit.oid}")) == 3


def test_no_tag_means_q4_k_m_like_llama_cpp(repo: EnsureOptions) -> None:
    assert ensure("hf://o/r", repo).path.name == "model-Q4_K_M.gguf"


def test_a_split_quant_brings_its_set(repo: EnsureOptions) -> None:
    entry = ensure("hf://o/r:Q5_K_M", repo)  # listed on a later page
    assert entry.set_path is not None
    assert sorted(p.name for p in entry.set_path.parent.iterdir()) == [
        "model-Q5_K_M-00001-of-00002.gguf",
        "model-Q5_K_M-00002-of-00002.gguf",
    ]


def test_resolution_is_remembered_for_zero_request_and_offline_use(
    hub: HubEmulator, repo: EnsureOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ensure("hf://o/r:Q8_0", repo)
    before = len(hub.hub.log) + len(hub.cdn.log)
    assert ensure("hf://o/r:Q8_0", repo).path == first.path
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ensure("hf://o/r:Q8_0", repo).path == first.path
    assert len(hub.hub.log) + len(hub.cdn.log) == before
    with pytest.raises(CacheMissError, match="resolve it once"):
        ensure("hf://o/r:Q4_K_S", repo)


def test_unknown_tag_lists_what_exists(repo: EnsureOptions) -> None:
    with pytest.raises(InvalidSourceError, match=r"tags found: Q4_K_M, Q4_K_S, Q5_K_M, Q8_0"):
        ensure("hf://o/r:IQ2_XXS", repo)


def test_hostile_ref_file_is_ignored(repo: EnsureOptions, cache_dir: Path) -> None:
    ensure("hf://o/r:Q8_0", repo)
    (ref,) = (cache_dir / "refs").iterdir()
    ref.write_text(json.dumps({"identity": "hfq:o/r@main:Q8_0", "path": "../../etc/passwd"}))
    assert ensure("hf://o/r:Q8_0", repo).path.name == "model-Q8_0.gguf"  # re-resolved


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

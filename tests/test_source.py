from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from modelfetch import InvalidSourceError, ModelSource
from modelfetch.source import HubTag


def test_hf_reference_parses_with_default_revision() -> None:
    s = ModelSource.parse("hf://TheOrg/My-Model.v2/sub/dir/model-Q4_K_M.gguf")
    assert (s.kind, s.repo_id, s.hf_path, s.revision) == (
        "hf",
        "TheOrg/My-Model.v2",
        "sub/dir/model-Q4_K_M.gguf",
        "main",
    )
    assert s.file_name == "model-Q4_K_M.gguf"
    assert s.identity == "hf:TheOrg/My-Model.v2@main/sub/dir/model-Q4_K_M.gguf"


def test_hf_revision_spellings_are_one_identity() -> None:
    at = ModelSource.parse("hf://o/r@v1.0/f.gguf")
    ctor = ModelSource.huggingface("o/r", "f.gguf", revision="v1.0")
    query = ModelSource.parse("hf://o/r/f.gguf?revision=v1.0")
    assert at.cache_key == ctor.cache_key == query.cache_key
    assert at.cache_key != ModelSource.parse("hf://o/r/f.gguf").cache_key


def test_hf_pr_revision_with_slash_via_query() -> None:
    s = ModelSource.parse("hf://o/r/f.gguf?revision=refs/pr/12")
    assert s.revision == "refs/pr/12"
    assert (
        s.resolve_url("http://127.0.0.1:9")
        == "http://127.0.0.1:9/o/r/resolve/refs%2Fpr%2F12/f.gguf"
    )
    assert str(s) == "hf://o/r/f.gguf?revision=refs/pr/12"


def test_hf_resolve_url_uses_endpoint_env_but_key_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    s = ModelSource.parse("hf://o/r/dir/a b.gguf")
    key = s.cache_key
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:8080/")
    assert s.resolve_url() == "http://127.0.0.1:8080/o/r/resolve/main/dir/a%20b.gguf"
    assert ModelSource.parse("hf://o/r/dir/a b.gguf").cache_key == key
    assert key == hashlib.sha256(b"hf:o/r@main/dir/a b.gguf").hexdigest()


@pytest.mark.parametrize(
    "text",
    [
        "hf://o/r/",  # empty file
        "hf://o/r/../x.gguf",
        "hf://o/r/a/./x.gguf",
        "hf://o/r/a//x.gguf",
        "hf://o/r/a\\x.gguf",
        "hf://o/r/a%2Fx.gguf",
        "hf://o/r/a%2e%2e/x.gguf",
        "hf://o/r/x.gguf%00",
        "hf://o/r/x\x00.gguf",
        "hf://o/r/x\n.gguf",
        "hf://-o/r/x.gguf",
        "hf://o/r-/x.gguf",
        "hf://o/r--x/x.gguf",
        "hf://o/r..x/x.gguf",
        "hf://o/" + "r" * 97 + "/x.gguf",
        "hf://o@v/r/x.gguf",
        "hf://o/r@/x.gguf",
        "hf://o/r@v1/x.gguf?revision=v2",
        "hf://o/r/x.gguf?revision=",
        "hf://o/r/x.gguf?rev=main",
        "hf://o/r/x.gguf?revision=a&revision=b",
        "hf://o/r/x.gguf?revision=../../etc",
        "hf://o/r/x.gguf?revision=/abs",
        "hf://o/r/x.gguf?revision=a//b",
        "hf://o/r/x.gguf?revision=a b",
        "hf://o/r/x.gguf#frag",
        "hf://o/r:",  # empty tag
        "hf://o/r:Q4 K",
        "hf://o/r@:Q4_K_M",
        "hf://o/r/" + "a/" * 600 + "x.gguf",
    ],
)
def test_hf_rejects_hostile_references(text: str) -> None:
    with pytest.raises(InvalidSourceError):
        ModelSource.parse(text)


def test_url_identity_is_canonical() -> None:
    a = ModelSource.parse("HTTPS://Example.COM:443/m/model.gguf?b=2&a=1#frag")
    b = ModelSource.parse("https://example.com/m/model.gguf?a=1&b=2")
    assert a.cache_key == b.cache_key
    assert a.cache_key != ModelSource.parse("https://example.com/m/model.gguf?a=1&b=3").cache_key
    assert a.cache_key != ModelSource.parse("http://example.com/m/model.gguf?a=1&b=2").cache_key


def test_signed_url_parameters_are_not_identity_and_never_shown() -> None:
    signed1 = "https://bucket.s3.example.com/m.gguf?X-Amz-Signature=SECRET1&X-Amz-Expires=60"
    signed2 = "https://bucket.s3.example.com/m.gguf?X-Amz-Signature=SECRET2&X-Amz-Expires=90"
    s1, s2 = ModelSource.parse(signed1), ModelSource.parse(signed2)
    assert s1.cache_key == s2.cache_key
    assert "SECRET1" not in repr(s1) and "SECRET1" not in str(s1)
    assert "SECRET1" not in s1.identity
    assert s1.request_url is not None and "SECRET1" in s1.request_url  # still sent on the wire


def test_userinfo_is_not_identity_or_display() -> None:
    s = ModelSource.parse("https://user:pw123@example.com/m.gguf")
    assert "pw123" not in repr(s) and "pw123" not in str(s) and "pw123" not in s.identity
    assert s.cache_key == ModelSource.parse("https://example.com/m.gguf").cache_key


@pytest.mark.parametrize(
    "text",
    [
        "ftp://example.com/x",
        "s3://bucket/x",
        "https:///nohost",
        "https://exa mple.com/x",
        "https://example.com/a\\b",
        "https://example.com:99999/x",
        "https://example.com/x\r\nInjected: 1",
        "https://exämple.com/x",
        "https://example.com/" + "a" * 9000,
    ],
)
def test_url_rejects_bad_input(text: str) -> None:
    with pytest.raises(InvalidSourceError):
        ModelSource.parse(text)


def test_url_errors_never_echo_secrets() -> None:
    with pytest.raises(InvalidSourceError) as err:
        ModelSource.parse("https://example.com:99999/x?token=TOPSECRET")
    assert "TOPSECRET" not in str(err.value)


def test_local_paths_resolve(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    link = tmp_path / "link.gguf"
    link.symlink_to(f)
    a = ModelSource.parse(str(f))
    assert ModelSource.parse(f"file://{f}").cache_key == a.cache_key
    assert ModelSource.coerce(link).cache_key == a.cache_key  # same file, same entry
    with pytest.raises(InvalidSourceError):
        ModelSource.parse("a\x00b")
    with pytest.raises(InvalidSourceError):
        ModelSource.parse("file://otherhost/etc/passwd")


def test_unicode_and_odd_file_names_become_safe_dir_names() -> None:
    s = ModelSource.parse("https://example.com/dir/%E6%A8%A1%E5%9E%8B%20v2..gguf")
    assert s.file_name.isascii() and "/" not in s.file_name and not s.file_name.startswith(".")
    assert s.entry_dir_name.endswith("-" + s.cache_key[:12])
    dots = ModelSource.parse("https://example.com/..%2F..%2Fetc%2Fpasswd")
    assert "/" not in dots.file_name and not dots.file_name.startswith(".")
    long = ModelSource.parse("https://example.com/" + "x" * 300 + ".gguf")
    assert long.file_name.endswith(".gguf") and len(long.file_name) <= 120


def test_cache_key_is_sha256_of_identity() -> None:
    s = ModelSource.url("http://127.0.0.1:8000/m.gguf")
    assert s.cache_key == hashlib.sha256(b"url:http://127.0.0.1:8000/m.gguf").hexdigest()
    assert s.entry_dir_name == f"m-{s.cache_key[:12]}"


def test_repo_with_quant_tag() -> None:
    s = ModelSource.parse("hf://o/r@v2:q4_k_m")
    assert isinstance(s, HubTag) and not hasattr(s, "hf_path")  # a tag names no file yet
    assert (s.repo_id, s.revision, s.quant) == ("o/r", "v2", "q4_k_m")
    assert s.cache_key == ModelSource.parse("hf://o/r@v2:Q4_K_M").cache_key  # tag case-free
    assert ModelSource.parse("hf://o/r").quant == "Q4_K_M"  # llama.cpp's default
    with pytest.raises(InvalidSourceError):
        s.resolve_url()  # a tag is resolved to a file before anything is fetched

"""Identity (core/identity.py): canonical forms, cache keys, safe names, validators."""

from __future__ import annotations

import hashlib

import pytest

from modelfetch.core.identity import (
    cache_key_of,
    canonical_url,
    entry_dir_name_of,
    safe_file_name,
    validate_hf_file_path,
    validate_hf_repo_id,
    validate_hf_revision,
)
from modelfetch.errors import InvalidSourceError


@pytest.mark.parametrize(
    "url, identity",
    [
        ("https://H.test/m.gguf", "https://h.test/m.gguf"),
        ("https://h.test:443/m.gguf", "https://h.test/m.gguf"),
        ("http://h.test:8080/m.gguf", "http://h.test:8080/m.gguf"),
        ("https://h.test/m.gguf?b=2&a=1", "https://h.test/m.gguf?a=1&b=2"),
        ("https://h.test/m.gguf?X-Amz-Signature=s&v=1", "https://h.test/m.gguf?v=1"),
        ("https://u:p@h.test/m.gguf", "https://h.test/m.gguf"),  # userinfo is no identity
        ("https://h.test/m.gguf#frag", "https://h.test/m.gguf"),
        ("https://h.test/ü.gguf", "https://h.test/%C3%BC.gguf"),
    ],
)
def test_canonical_identity(url: str, identity: str) -> None:
    assert canonical_url(url)[1] == identity


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h.test/m",
        "https:///m",
        "https://h.test/a b",
        "https://h.test/\x00",
        "https://h.test\\m",
        "https://h.test:99999/m",
        "https://bücher.test/m",
        "https://h.test/" + "a" * 9000,
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidSourceError):
        canonical_url(url)


def test_cache_key_is_the_identity_digest() -> None:
    key = cache_key_of("url:https://h.test/m.gguf")
    assert key == hashlib.sha256(b"url:https://h.test/m.gguf").hexdigest()
    assert entry_dir_name_of("m.gguf", key) == f"m-{key[:12]}"
    assert entry_dir_name_of("", key) == f"download-{key[:12]}"


@pytest.mark.parametrize(
    "name, safe",
    [
        ("model.gguf", "model.gguf"),
        ("../../etc/passwd", "_.._etc_passwd"),
        (".hidden", "hidden"),
        ("", "download"),
        ("metadata.json", "metadata.json_"),
        ("m.part", "m.part_"),
        ("a b\x1b.gguf", "a_b_.gguf"),
        ("x" * 200 + ".gguf", "x" * 115 + ".gguf"),
    ],
)
def test_safe_file_name(name: str, safe: str) -> None:
    assert safe_file_name(name) == safe


@pytest.mark.parametrize(
    "check, value",
    [
        (validate_hf_repo_id, "owner"),
        (validate_hf_repo_id, "a/b/c"),
        (validate_hf_repo_id, "own--er/repo"),
        (validate_hf_repo_id, "owner/.repo"),
        (validate_hf_revision, "../main"),
        (validate_hf_revision, "a//b"),
        (validate_hf_revision, "-x"),
        (validate_hf_file_path, ""),
        (validate_hf_file_path, "a/../b"),
        (validate_hf_file_path, "a%2Fb"),
        (validate_hf_file_path, "a\\b"),
        (validate_hf_file_path, "/abs"),
    ],
)
def test_hub_parts_are_validated(check: object, value: str) -> None:
    assert callable(check)
    with pytest.raises(InvalidSourceError):
        check(value)

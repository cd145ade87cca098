"""Identity (core/identity.py): canonical forms, cache keys, safe names, validators."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

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
from modelfetch.source import HubFile, HubTag, ModelSource, PathSource, UrlSource


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


# -- ModelSource variants (source.py): each carries only its own fields ---------------------
@pytest.mark.parametrize(
    "text, variant, fields, kind, identity, file_name, display",
    [
        (
            "/m/model.gguf",
            PathSource,
            {"local_path": Path("/m/model.gguf")},
            "path",
            "path:/m/model.gguf",
            "model.gguf",
            "/m/model.gguf",
        ),
        (
            "https://u:secret@H.test:443/d/a%20b.gguf?X-Amz-Signature=s&v=1",
            UrlSource,
            {"request_url": "https://u:secret@h.test/d/a%20b.gguf?X-Amz-Signature=s&v=1"},
            "url",
            "url:https://h.test/d/a%20b.gguf?v=1",
            "a_b.gguf",
            "https://h.test/d/a%20b.gguf?<redacted>",  # no userinfo, no query
        ),
        (
            "hf://o/r@v1/sub/m.gguf",
            HubFile,
            {"repo_id": "o/r", "revision": "v1", "hf_path": "sub/m.gguf"},
            "hf",
            "hf:o/r@v1/sub/m.gguf",
            "m.gguf",
            "hf://o/r@v1/sub/m.gguf",
        ),
        (
            "hf://o/r:q8_0?revision=refs/pr/1",
            HubTag,
            {"repo_id": "o/r", "revision": "refs/pr/1", "quant": "q8_0"},
            "hf",
            "hfq:o/r@refs/pr/1:Q8_0",
            "q8_0.gguf",
            "hf://o/r:q8_0?revision=refs/pr/1",
        ),
    ],
)
def test_source_variants(
    text: str,
    variant: type[ModelSource],
    fields: dict[str, object],
    kind: str,
    identity: str,
    file_name: str,
    display: str,
) -> None:
    s = ModelSource.parse(text)
    assert type(s) is variant and isinstance(s, ModelSource)
    assert {f.name for f in dataclasses.fields(s) if f.init} == set(fields)
    assert {name: getattr(s, name) for name in fields} == fields
    assert (s.kind, s.identity, s.file_name, s.display) == (kind, identity, file_name, display)
    assert s.cache_key == cache_key_of(identity)
    assert s.entry_dir_name == entry_dir_name_of(file_name, s.cache_key)
    assert str(s) == display and "secret" not in repr(s)
    assert variant(**fields) == s and hash(variant(**fields)) == hash(s)
    assert ModelSource.coerce(s) is s


@pytest.mark.parametrize(
    "a, b, same",
    [
        ("hf://o/r/f.gguf", "hf://o/r@main/f.gguf", True),
        ("hf://o/r@v1/f.gguf", "hf://o/r/f.gguf?revision=v1", True),
        ("hf://o/r@v1/f.gguf", "hf://o/r@v2/f.gguf", False),
        ("hf://o/r:Q4_K_M", "hf://o/r", True),
        ("hf://o/r:Q4_K_M", "hf://o/r/Q4_K_M.gguf", False),  # a tag is not the file
        ("https://h.test/m.gguf", "HTTPS://h.test:443/m.gguf#x", True),
        ("https://h.test/m.gguf?sig=1", "https://h.test/m.gguf?sig=2", False),  # the wire URL
        ("/m/a.gguf", "file:///m/a.gguf", True),
        ("/m/a.gguf", "/m/b.gguf", False),
    ],
)
def test_source_equality_is_by_variant_and_fields(a: str, b: str, same: bool) -> None:
    sa, sb = ModelSource.parse(a), ModelSource.parse(b)
    assert (sa == sb) is same
    assert (len({sa, sb}) == 1) is same


@pytest.mark.parametrize(
    "build",
    [
        lambda: PathSource(Path("relative.gguf")),
        lambda: UrlSource("HTTPS://H.test/m.gguf"),  # not canonical: use ModelSource.url
        lambda: UrlSource("ftp://h.test/m"),
        lambda: HubFile("o/r", "main", "../x.gguf"),
        lambda: HubFile("o", "main", "x.gguf"),
        lambda: HubTag("o/r", "a//b", "Q4"),
        lambda: HubTag("o/r", "main", "Q4 K"),
    ],
)
def test_variants_validate_their_fields(build: Callable[[], ModelSource]) -> None:
    with pytest.raises(InvalidSourceError):
        build()


def test_a_tag_resolves_to_a_file_of_its_repo_and_revision() -> None:
    tag = ModelSource.huggingface_quant("o/r", "Q8_0", "v1")
    assert tag.file("d/m-Q8_0.gguf") == ModelSource.parse("hf://o/r@v1/d/m-Q8_0.gguf")
    with pytest.raises(InvalidSourceError):
        tag.resolve_url()

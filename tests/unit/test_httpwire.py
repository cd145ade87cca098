"""HTTP rules without sockets (core/httpwire.py): redirects, statuses, Retry-After, ranges."""

from __future__ import annotations

import pytest

from modelfetch.core.httpwire import (
    next_hop,
    origin_of,
    parse_retry_after,
    serve_range,
    split_userinfo,
    status_error,
)
from modelfetch.core.retry import RetryableError
from modelfetch.errors import DownloadError, InsecureRedirectError

NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
HERE = "https://origin.test/a/model.gguf"


@pytest.mark.parametrize(
    "value, expected",
    [("5", 5.0), ("0", 0.0), (None, None), ("", None), ("soon", None), ("-3", None),
     ("9" * 40, 86400.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
     ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0), ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0)],
)  # fmt: skip
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(
    "location, cross, expected",
    [
        ("/b/model.gguf", True, "https://origin.test/b/model.gguf"),
        ("other.gguf", True, "https://origin.test/a/other.gguf"),
        ("https://cdn.test/x?sig=1", True, "https://cdn.test/x?sig=1"),
        ("https://cdn.test/x", False, None),  # handed back: the caller wants its headers
        ("/same-origin", False, "https://origin.test/same-origin"),
        # http.client decodes header bytes as latin-1: they go back out as those bytes
        ("/with space/ü", True, "https://origin.test/with%20space/%FC"),
    ],
)
def test_next_hop_follows(location: str, cross: bool, expected: str | None) -> None:
    assert next_hop(HERE, location, 302, origin_of(HERE), cross) == expected


@pytest.mark.parametrize(
    "current, location, error",
    [
        (HERE, None, DownloadError),  # no Location
        (HERE, "", DownloadError),
        (HERE, "http://origin.test/a", InsecureRedirectError),  # https -> http
        (HERE, "ftp://origin.test/a", InsecureRedirectError),
        (HERE, "file:///etc/passwd", InsecureRedirectError),
        (HERE, "https://bad host\x07/", DownloadError),  # control character
        (HERE, "https://origin.test:99999/", DownloadError),  # bad port
        (HERE, "https://[::1/", DownloadError),  # bad brackets
    ],
)
def test_next_hop_refuses(current: str, location: str | None, error: type[Exception]) -> None:
    with pytest.raises(error):
        next_hop(current, location, 302, origin_of(current))


def test_http_may_redirect_to_https() -> None:
    plain = "http://origin.test/m"
    assert next_hop(plain, "https://origin.test/m", 301, origin_of(plain)) == (
        "https://origin.test/m"
    )


@pytest.mark.parametrize(
    "url, origin",
    [
        ("https://Origin.Test/x", ("https", "origin.test", 443)),
        ("http://origin.test/x", ("http", "origin.test", 80)),
        ("http://origin.test:8080/x", ("http", "origin.test", 8080)),
        ("https://[::1]:8443/x", ("https", "::1", 8443)),
    ],
)
def test_origin_of(url: str, origin: tuple[str, str, int]) -> None:
    assert origin_of(url) == origin


def test_split_userinfo() -> None:
    assert split_userinfo("https://u:p%40ss@h.test/x") == (
        "https://h.test/x",
        {"Authorization": "Basic dTpwQHNz"},
    )
    assert split_userinfo("https://h.test/x") == ("https://h.test/x", {})


@pytest.mark.parametrize(
    "status, kind",
    [(500, RetryableError), (503, RetryableError), (429, RetryableError), (408, RetryableError),
     (404, DownloadError), (401, DownloadError), (403, DownloadError), (418, DownloadError)],
)  # fmt: skip
def test_status_error(status: int, kind: type[Exception]) -> None:
    error = status_error(status, "https://origin.test/m", 3.0)
    assert type(error) is kind
    if isinstance(error, RetryableError):
        assert error.retry_after == 3.0
    else:
        assert isinstance(error, DownloadError) and error.status == status


@pytest.mark.parametrize(
    "header, size, answer",
    [
        (None, 100, (200, 0, 99)),
        ("bytes=0-9", 100, (206, 0, 9)),
        ("bytes=90-", 100, (206, 90, 99)),
        ("bytes=90-500", 100, (206, 90, 99)),  # clipped to the file
        ("bytes=-10", 100, (206, 90, 99)),  # suffix
        ("bytes=-500", 100, (206, 0, 99)),
        ("bytes=-0", 100, (416, 0, -1)),
        ("bytes=100-", 100, (416, 0, -1)),  # starts past the end
        ("bytes=9-3", 100, (416, 0, -1)),
        ("bytes=-", 100, (416, 0, -1)),
        ("bytes=0-", 0, (416, 0, -1)),  # nothing to give from an empty file
        ("bytes=0-1,5-6", 100, (200, 0, 99)),  # several ranges: ignored
        ("items=0-9", 100, (200, 0, 99)),  # not bytes: ignored
        ("bytes=" + "9" * 30 + "-", 100, (200, 0, 99)),  # absurd number: ignored
    ],
)
def test_serve_range(header: str | None, size: int, answer: tuple[int, int, int]) -> None:
    assert serve_range(header, size) == answer

"""EnsureOptions' checks and the environment readers (options.py): no sockets, no files."""

from __future__ import annotations

import pytest

from modelfetch import EnsureOptions, InvalidSourceError
from modelfetch.fetch.tier import RemoteTier
from modelfetch.options import env_hf_cache_setting, env_offline, hf_endpoint


@pytest.mark.parametrize("remote", [5, object(), b"s3://b/p"])
def test_remote_must_be_a_url_or_a_tier(remote: object) -> None:
    with pytest.raises(InvalidSourceError):
        EnsureOptions(remote=remote)  # type: ignore[arg-type]


def test_a_tier_object_is_accepted() -> None:
    tier = RemoteTier("s3://bucket-a/prefix")
    assert EnsureOptions(remote=tier).remote is tier


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "5"])
def test_stall_seconds_is_checked(value: object) -> None:
    with pytest.raises(InvalidSourceError):
        EnsureOptions(stall_seconds=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "env, explicit, endpoint",
    [
        ({}, None, "https://huggingface.co"),
        ({"HF_ENDPOINT": "http://127.0.0.1:9/"}, None, "http://127.0.0.1:9"),
        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "http://127.0.0.2:8/", "http://127.0.0.2:8"),
    ],
)
def test_hf_endpoint(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], explicit: str | None, endpoint: str
) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert hf_endpoint(explicit) == endpoint


@pytest.mark.parametrize(
    "modelfetch_offline, hf_offline, hub, offline",
    [("", "", True, False), ("1", "", False, True), ("", "yes", True, True),
     ("", "on", False, False), ("0", "0", True, False)],
)  # fmt: skip
def test_env_offline(
    monkeypatch: pytest.MonkeyPatch,
    modelfetch_offline: str,
    hf_offline: str,
    hub: bool,
    offline: bool,
) -> None:
    monkeypatch.setenv("MODELFETCH_OFFLINE", modelfetch_offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", hf_offline)
    assert env_offline(hub) is offline


@pytest.mark.parametrize("value, setting", [(None, None), ("  ", None), (" 1 ", "1")])
def test_env_hf_cache_setting(
    monkeypatch: pytest.MonkeyPatch, value: str | None, setting: str | None
) -> None:
    monkeypatch.delenv("MODELFETCH_HF_CACHE", raising=False)
    if value is not None:
        monkeypatch.setenv("MODELFETCH_HF_CACHE", value)
    assert env_hf_cache_setting() == setting

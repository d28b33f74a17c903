"""The store-endpoint guard (issue "Platform-owned runtimes", item 2): what it allows and
refuses, before any connection, on the URL and on what its host resolves to."""

from __future__ import annotations

import pytest
from sparring_operator.endpoints import Allowed, endpoint_refusal

FIELD = "spec.storage.endpoint"
ALLOWED = ["https://minio.storage.svc:9000", "https://*.s3.example.com"]


def resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        if host not in table:
            raise OSError("no such host")
        return table[host]

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


def test_an_allowed_endpoint_that_resolves_to_an_ordinary_address_passes() -> None:
    resolve = resolver({"minio.storage.svc": ["10.0.3.7"], "eu.s3.example.com": ["52.1.2.3"]})
    assert endpoint_refusal(FIELD, "https://minio.storage.svc:9000", ALLOWED, resolve) is None
    assert endpoint_refusal(FIELD, "https://EU.s3.example.com/", ALLOWED, resolve) is None
    assert resolve.asked == [("minio.storage.svc", 9000), ("eu.s3.example.com", 443)]


@pytest.mark.parametrize(
    "url",
    [
        "http://minio.storage.svc:9000",  # another scheme
        "https://minio.storage.svc",  # another port (443)
        "https://minio.storage.svc.evil.io:9000",  # a suffix is not the host
        "https://s3.example.com",  # the wildcard is for hosts under the domain only
        "https://evil-s3.example.com",
    ],
)
def test_anything_not_allowed_is_refused_without_being_resolved(url: str) -> None:
    resolve = resolver({})
    message = endpoint_refusal(FIELD, url, ALLOWED, resolve)
    assert message is not None and message.startswith(f"{FIELD}: ")
    assert "is not an allowed endpoint (allowed: https://minio.storage.svc:9000" in message
    assert resolve.asked == []  # refused before any lookup, let alone a connection


@pytest.mark.parametrize("address", ["169.254.169.254", "fe80::1%eth0", "fd00:ec2::254"])
def test_an_allowed_name_that_resolves_to_the_metadata_service_is_refused(address: str) -> None:
    resolve = resolver({"minio.storage.svc": ["10.0.3.7", address]})
    message = endpoint_refusal(FIELD, "https://minio.storage.svc:9000", ALLOWED, resolve)
    assert message is not None and "link-local (metadata) address" in message


def test_a_name_that_does_not_resolve_is_refused_naming_the_field() -> None:
    message = endpoint_refusal(FIELD, "https://minio.storage.svc:9000", ALLOWED, resolver({}))
    assert message == f"{FIELD}: minio.storage.svc does not resolve"


def test_no_allow_list_allows_nothing_and_bad_entries_are_errors() -> None:
    assert "allowed: none" in str(endpoint_refusal(FIELD, "https://a.b", [], resolver({})))
    assert endpoint_refusal(FIELD, "ftp://a.b", ALLOWED, resolver({})) == (
        f"{FIELD}: 'ftp://a.b' is not an http:// or https:// URL"
    )
    with pytest.raises(ValueError, match="expected scheme://host"):
        Allowed.parse("https://a.b/bucket")


@pytest.mark.parametrize(
    "host",
    [
        "[::ffff:169.254.169.254]",  # IPv4-mapped: a dual-stack socket reaches the IPv4 host
        "[::ffff:a9fe:a9fe]",
        "[64:ff9b::a9fe:a9fe]",  # NAT64
        "[2002:a9fe:a9fe::1]",  # 6to4
        "[::169.254.169.254]",  # IPv4-compatible
    ],
)
def test_the_metadata_address_written_as_ipv6_is_refused_too(host: str) -> None:
    message = endpoint_refusal(FIELD, f"http://{host}", ["*"])
    assert message is not None and "a link-local (metadata) address" in message


def test_ipv6_forms_of_ordinary_addresses_pass() -> None:
    for host in ("[::1]", "[::ffff:10.0.0.1]", "[64:ff9b::a00:1]"):
        assert endpoint_refusal(FIELD, f"http://{host}", ["*"]) is None, host

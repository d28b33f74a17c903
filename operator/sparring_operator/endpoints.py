"""Which store endpoints a game may make the operator connect to (issue "Platform-owned
runtimes", item 2): checked before any connection, on the URL and on every address its host
resolves to, so that a name pointing at the cloud metadata service is refused even when the
name itself is allowed.

A refusal names the field and the rule, never anything the endpoint said: the operator has not
talked to it.

`runtimes.apply_runtime` checks a game's spec.storage.endpoint against its runtime's
`storage.allowedEndpoints` on every reconcile pass, before the store is opened. The client then
resolves the name again: a DNS answer that changes between the check and the connection (DNS
rebinding) is not caught here; the phase NetworkPolicy is the second line (SECURITY.md).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]  # (host, port) -> addresses

# Link-local (the cloud metadata services live there: 169.254.169.254, fd00:ec2::254 is a
# unique-local one AWS uses) is never a store.
_NEVER = [
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
]
DEFAULT_PORTS = {"http": 80, "https": 443}
ANY = "*"  # any endpoint whose addresses are not link-local


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (what a client would connect to)."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, port)})


@dataclass(frozen=True)
class Allowed:
    """One allowed endpoint: `scheme://host[:port]`, or `scheme://*.domain[:port]` for any host
    under that domain."""

    scheme: str
    host: str  # lower case; "*.example.com" matches a.example.com, not example.com
    port: int

    @classmethod
    def parse(cls, entry: str) -> Allowed:
        if entry == ANY:
            return cls("*", "*", 0)
        parts = urlsplit(entry)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"{entry!r}: expected scheme://host[:port] (http or https)")
        return cls(parts.scheme, parts.hostname.lower(), parts.port or DEFAULT_PORTS[parts.scheme])

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if self.scheme == ANY:
            return True
        if (scheme, port) != (self.scheme, self.port):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


def endpoint_refusal(
    field: str, url: str, allowed: Sequence[str], resolve: Resolver = system_resolver
) -> str | None:
    """Why the operator must not connect to `url` (None: it may). `field` names where the game
    wrote it (e.g. spec.storage.endpoint)."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return f"{field}: {url!r} is not an http:// or https:// URL"
    scheme, host = parts.scheme, parts.hostname.lower()
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        return f"{field}: {url!r} has an invalid port"
    rules = [Allowed.parse(entry) for entry in allowed]
    if not any(rule.matches(scheme, host, port) for rule in rules):
        shown = ", ".join(allowed) or "none"
        return f"{field}: {scheme}://{host}:{port} is not an allowed endpoint (allowed: {shown})"
    try:
        addresses = resolve(host, port)
    except OSError:
        return f"{field}: {host} does not resolve"
    if not addresses:
        return f"{field}: {host} does not resolve"
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone is not the address
        if any(seen in network for seen in _forms(ip) for network in _NEVER):
            return f"{field}: {host} resolves to {ip}, a link-local (metadata) address"
    return None


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_COMPATIBLE = ipaddress.ip_network("::/96")  # the deprecated IPv4-compatible ::a.b.c.d


def _forms(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress._BaseAddress]:
    """The address and every IPv4 address an IPv6 one carries (::ffff:169.254.169.254 reaches
    the IPv4 host on a dual-stack socket; 6to4 and NAT64 route to it)."""
    forms: list[ipaddress._BaseAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour]
        if ip in _NAT64 or (ip in _COMPATIBLE and int(ip) > 1):
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        forms += [v4 for v4 in embedded if v4 is not None]
    return forms

"""Where webhooks may be sent: not into the deployment's own network (SSRF).

A tenant chooses the URL and our worker makes the request, so without this check a tenant could
make llmq POST to the cloud metadata service, to Redis's or Postgres's port, or to any internal
host. By default a destination must resolve only to global addresses; operators who deliver to
internal receivers set LLMQ_WEBHOOK_ALLOW_PRIVATE=true. Checked at submission for literal hosts
(a clear 422) and again before every delivery on the resolved addresses, since DNS can change.
A name that resolves to a public address at check time and a private one a moment later (DNS
rebinding) is not covered; a proxy that pins the checked address would be.

Numeric hosts are judged as the resolver reads them: `2130706433`, `0x7f000001`, `0177.0.0.1`
and `127.1` are all 127.0.0.1 to inet_aton (and so to getaddrinfo and every HTTP client), and
an IPv6 address that carries an IPv4 one (mapped, compatible, 6to4, NAT64) is judged by it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

Resolver = Callable[[str, int], list[str]]

LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
# What inet_aton may read as an IPv4 address (1 to 4 decimal, octal or hex parts). Checked
# first because glibc's inet_aton ignores anything after a space ("1.2.3.4 x" is 1.2.3.4).
_NUMERIC_HOST = re.compile(r"\A(?:0x[0-9a-f]*|[0-9]+)(?:\.(?:0x[0-9a-f]*|[0-9]+)){0,3}\Z")
# Never part of a host name (httpx would percent-encode them and send a lookup that fails).
_BAD_HOST_CHARS = re.compile(r"[\s\x00-\x1f\x7f%<>\"{}|\\^`]")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def url_problem(url: str) -> str | None:
    """Why `url` cannot be delivered to at all (malformed), else None: checked at submission,
    so a bad URL is a 422 there rather than a failure of every delivery."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number in 0-65535
    except ValueError as exc:
        return f"webhook_url is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "webhook_url must be an absolute http(s) URL"
    if port == 0:
        return "webhook_url has port 0; a port is 1-65535"
    if ":" not in parts.hostname and _BAD_HOST_CHARS.search(parts.hostname):
        return f"webhook_url has an invalid host {parts.hostname!r}"
    try:
        httpx.URL(url)  # what delivery sends with; it refuses some hosts urlsplit accepts
    except (httpx.InvalidURL, ValueError) as exc:  # ValueError: e.g. an unencodable character
        return f"webhook_url is not a valid URL ({exc})"
    return None


def host_address(host: str) -> IPAddress | None:
    """The address a numeric host stands for, as the resolver reads it; None for a name."""
    host = host.split("%", 1)[0]  # drop an IPv6 zone id
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not _NUMERIC_HOST.match(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None  # e.g. "08.1.1.1" (not octal): getaddrinfo would look it up as a name


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, compatible, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):  # ::a.b.c.d (not :: or ::1)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def resolve(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _refusal(ip: IPAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None and not embedded.is_global:
            return f"{ip} is {embedded}, not a public address"
    if ip.is_global:
        return None
    return f"{ip} is not a public address"


def literal_refusal(url: str) -> str | None:
    """Why `url` names a non-public host outright (an IP literal or localhost), else None."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".").lower()
    except ValueError:
        return None  # malformed (e.g. an unclosed "[::1"): url_problem says why
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        return f"{host} is a local name"
    address = host_address(host)
    if address is None:
        return None  # a name: resolved before each delivery
    refusal = _refusal(address)
    if refusal is None or str(address) == host or address.version == 6:
        return refusal  # (an IPv6 refusal names the IPv4 address it carries)
    return f"{host} is read as {address}: {refusal}"


def destination_refusal(url: str, resolver: Resolver = resolve) -> str | None:
    """Why a delivery to `url` is refused (a non-public or unresolvable host), else None."""
    refusal = literal_refusal(url)
    if refusal is not None:
        return refusal
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = resolver(parts.hostname or "", port)
    except OSError as exc:
        return f"{parts.hostname} does not resolve ({exc.__class__.__name__})"
    for address in addresses:
        refusal = _refusal(ipaddress.ip_address(address.split("%", 1)[0]))
        if refusal is not None:
            return f"{parts.hostname} resolves to {address}: {refusal}"
    return None if addresses else f"{parts.hostname} resolves to no address"

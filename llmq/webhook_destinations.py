"""Where webhooks may be sent: not into the deployment's own network (SSRF).

A tenant chooses the URL and our worker makes the request, so without this check a tenant could
make llmq POST to the cloud metadata service, to Redis's or Postgres's port, or to any internal
host. By default a destination must resolve only to global addresses; operators who deliver to
internal receivers set LLMQ_WEBHOOK_ALLOW_PRIVATE=true. Checked at submission for literal hosts
(a clear 422) and again before every delivery on the resolved addresses, since DNS can change.
A name that resolves to a public address at check time and a private one a moment later (DNS
rebinding) is not covered; a proxy that pins the checked address would be.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

Resolver = Callable[[str, int], list[str]]

LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def resolve(host: str, port: int) -> list[str]:
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _refusal(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_global:
        return None
    return f"{ip} is not a public address"


def literal_refusal(url: str) -> str | None:
    """Why `url` names a non-public host outright (an IP literal or localhost), else None."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host in LOCAL_NAMES or host.endswith(".localhost"):
        return f"{host} is a local name"
    try:
        return _refusal(host)
    except ValueError:
        return None  # a name: resolved before each delivery


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
        refusal = _refusal(address)
        if refusal is not None:
            return f"{parts.hostname} resolves to {address}: {refusal}"
    return None if addresses else f"{parts.hostname} resolves to no address"

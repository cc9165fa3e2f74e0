"""Webhook destinations: only public addresses, by literal host and by what a name resolves to."""

from __future__ import annotations

import pytest

from llmq.webhooks.destinations import destination_refusal, literal_refusal, url_problem


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://api.localhost/hook",
        "http://10.1.2.3/hook",
        "http://172.16.0.9/hook",
        "http://192.168.1.1/hook",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[::1]:9000/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",  # carrier-grade NAT
    ],
)
def test_literal_internal_hosts_are_refused(url: str) -> None:
    assert literal_refusal(url) is not None
    assert destination_refusal(url, resolver=lambda host, port: ["93.184.216.34"]) is not None


def test_public_literals_and_names_pass_the_literal_check() -> None:
    assert literal_refusal("https://93.184.216.34/hook") is None
    assert literal_refusal("https://hooks.example.com/hook") is None  # resolved at delivery


def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    seen: list[tuple[str, int]] = []

    def public_then_private(host: str, port: int) -> list[str]:
        seen.append((host, port))
        return ["93.184.216.34", "10.0.0.5"]

    refusal = destination_refusal("https://hooks.example.com/x", resolver=public_then_private)
    assert refusal is not None and "10.0.0.5" in refusal
    assert seen == [("hooks.example.com", 443)]
    assert destination_refusal("http://hooks.example.com:8443/x",
                               resolver=lambda h, p: ["93.184.216.34"]) is None  # fmt: skip


def test_a_name_that_does_not_resolve_is_refused() -> None:
    def fail(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    refusal = destination_refusal("https://nowhere.example/x", resolver=fail)
    assert refusal is not None and "does not resolve" in refusal


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",  # one 32-bit number
        "0x7f000001",
        "0177.0.0.1",  # octal
        "127.1",  # a.b with b filling the last 24 bits
        "0x7f.0.0.1",
        "127.000.000.001",
        "0",  # 0.0.0.0
        "[::ffff:7f00:1]",  # IPv4-mapped, hex spelling
        "[::127.0.0.1]",  # IPv4-compatible
        "[64:ff9b::a00:1]",  # NAT64 of 10.0.0.1
        "[2002:a9fe:a9fe::1]",  # 6to4 of 169.254.169.254
    ],
)
def test_numeric_host_forms_are_judged_as_the_resolver_reads_them(host: str) -> None:
    url = f"http://{host}:8080/hook"
    refusal = literal_refusal(url)
    assert refusal is not None and "not a public address" in refusal


def test_numeric_forms_of_public_addresses_and_names_that_look_numeric_pass() -> None:
    assert literal_refusal("http://1572395042/hook") is None  # 93.184.216.34
    assert literal_refusal("http://[2002:5db8:d822::1]/hook") is None  # 6to4 of a public one
    # Not an address to inet_aton (8 is no octal digit): a name, resolved before delivery.
    assert literal_refusal("http://08.1.1.1/hook") is None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://hooks.example.com:99999/x", "Port out of range"),
        ("http://hooks.example.com:abc/x", "could not be cast"),
        ("http://hooks.example.com:-1/x", "could not be cast"),
        ("http://hooks.example.com:0/x", "port 0"),
        ("ftp://hooks.example.com/x", "absolute http(s) URL"),
        ("/relative/path", "absolute http(s) URL"),
        ("http://exa mple.com/x", "invalid host"),
        ("http://a\ud800b/x", "not a valid URL"),  # a lone surrogate (JSON "\\ud800")
    ],
)
def test_malformed_urls_are_named(url: str, says: str) -> None:
    problem = url_problem(url)
    assert problem is not None and says in problem


def test_well_formed_urls_have_no_problem() -> None:
    for url in ("https://hooks.example.com/x", "http://93.184.216.34:65535/x?a=1",
                "http://[2001:db8::1]:8443/x"):  # fmt: skip
        assert url_problem(url) is None

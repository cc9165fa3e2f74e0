"""Webhook destinations: only public addresses, by literal host and by what a name resolves to."""

from __future__ import annotations

import pytest

from llmq.webhook_destinations import destination_refusal, literal_refusal


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

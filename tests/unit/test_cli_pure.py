"""Pure parts of the CLI: node names as Celery forms them."""

from __future__ import annotations

import socket

import pytest

from llmq.cli.main import node_name


@pytest.mark.parametrize(
    ("given", "node"),
    [
        ("w1", f"w1@{socket.gethostname()}"),
        ("w1@%h", f"w1@{socket.gethostname()}"),
        ("w1@box", "w1@box"),
    ],
)
def test_node_names_follow_celery(given: str, node: str) -> None:
    assert node_name(given) == node

"""Integration tests run against real services: every one gets the stack's environment."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _stack(stack_env: dict[str, str]) -> dict[str, str]:
    return stack_env

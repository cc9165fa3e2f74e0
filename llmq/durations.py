"""Durations as users write them: 3600, "90s", "30m", "1h", "2d"."""

from __future__ import annotations

import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_PATTERN = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


def parse_duration(value: int | str) -> int:
    """Seconds in `value`; ValueError with a readable message otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected seconds or a duration like '1h'")
    if isinstance(value, int):
        seconds = value
    else:
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration: use seconds or e.g. '90s', '30m', '1h'")
        seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds

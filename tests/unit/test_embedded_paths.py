"""Who can reach a path, by mode bits: decides where the embedded PostgreSQL's binaries and
data go when it runs as another user (root runs it as llmq-postgres)."""

from __future__ import annotations

import os
from pathlib import Path

from llmq.localstack.embedded import can_reach, permits

ROOT, SERVER, STAFF = 0, 999, 50


def test_mode_bits_are_read_as_owner_then_group_then_other() -> None:
    # /root: 0700 root:root. Nobody else may enter it, so nothing below it is reachable.
    assert not permits(0o40700, ROOT, ROOT, SERVER, (SERVER,), os.X_OK)
    assert permits(0o40700, ROOT, ROOT, ROOT, (ROOT,), os.X_OK)
    # 0701: search without listing is enough to reach a known name.
    assert permits(0o40701, ROOT, ROOT, SERVER, (SERVER,), os.X_OK)
    # Group bits apply to members, and only they: 0710 root:staff.
    assert permits(0o40710, ROOT, STAFF, SERVER, (SERVER, STAFF), os.X_OK)
    assert not permits(0o40710, ROOT, STAFF, SERVER, (SERVER,), os.X_OK)
    # The owner's bits decide for the owner even when "other" would allow more.
    assert not permits(0o40077, SERVER, ROOT, SERVER, (SERVER,), os.X_OK)
    # Every wanted bit must be granted: a 0644 file is readable, not executable.
    assert permits(0o100644, ROOT, ROOT, SERVER, (SERVER,), os.R_OK)
    assert not permits(0o100644, ROOT, ROOT, SERVER, (SERVER,), os.R_OK | os.X_OK)


def test_a_private_directory_hides_what_is_below_it_from_other_users(tmp_path: Path) -> None:
    target = tmp_path / "private" / "open" / "initdb"
    target.parent.mkdir(parents=True)
    target.write_text("#!/bin/sh\n")
    target.chmod(0o755)
    (tmp_path / "private").chmod(0o700)
    stranger = os.getuid() + 12345  # owns nothing here and is in none of these groups
    assert not can_reach(target, stranger, ())
    assert can_reach(target, os.getuid(), os.getgroups())  # the owner still can

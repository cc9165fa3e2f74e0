"""The migration files, read without a database: named in the order Alembic applies them, and
with the revision ids deployed databases already store (renaming one would strand them)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

VERSIONS = Path(__file__).resolve().parents[2] / "migrations" / "versions"

# Stored in `alembic_version` by every database migrated so far: these must never change.
DEPLOYED_CHAIN = ["0001", "0010", "0005", "0004", "0003", "0008", "0002", "0011"]


def _revisions() -> dict[str, tuple[str, str | None]]:
    """file name -> (revision, down_revision), read from the module's assignments."""
    found = {}
    for path in sorted(VERSIONS.glob("[0-9]*.py")):
        values: dict[str, str | None] = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.AnnAssign | ast.Assign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant):
                        values[target.id] = node.value.value
        found[path.name] = (str(values["revision"]), values["down_revision"])
    return found


def _apply_order(revisions: dict[str, tuple[str, str | None]]) -> list[str]:
    """File names from the base to the head, following down_revision; fails on a branch."""
    by_parent: dict[str | None, list[str]] = {}
    for name, (_, down) in revisions.items():
        by_parent.setdefault(down, []).append(name)
    order: list[str] = []
    parent: str | None = None
    while parent in by_parent:
        children = by_parent[parent]
        assert len(children) == 1, f"revision {parent} has several children: {children}"
        order.append(children[0])
        parent = revisions[children[0]][0]
    return order


def test_file_names_follow_the_apply_order() -> None:
    revisions = _revisions()
    order = _apply_order(revisions)
    assert sorted(order) == sorted(revisions), "some files are not on the chain from the base"
    assert sorted(revisions) == order, "files out of apply order; should be: " + ", ".join(order)
    numbers = [int(re.match(r"\d+", name).group()) for name in order]  # type: ignore[union-attr]
    assert numbers == list(range(1, len(order) + 1)), "file numbers must be 0001, 0002, ..."


def test_deployed_revision_ids_are_unchanged_and_new_ones_increase() -> None:
    ids = [_revisions()[name][0] for name in _apply_order(_revisions())]
    assert ids[: len(DEPLOYED_CHAIN)] == DEPLOYED_CHAIN
    newer = [int(i) for i in ids[len(DEPLOYED_CHAIN) :]]
    assert newer == sorted(newer) and all(n > 11 for n in newer), (
        f"revision ids after 0011 must increase: {ids}"
    )

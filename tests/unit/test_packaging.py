"""The wheel ships every package: pyproject lists them by hand (migrations/ is mapped into
llmq.migrations, which automatic discovery cannot express), so a new subpackage must be added
there, and this test says which one was forgotten."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _packages_under(folder: Path, name: str) -> set[str]:
    """`name` and every package below it: each directory holding an __init__.py."""
    return {
        ".".join([name, *init.parent.relative_to(folder).parts])
        for init in folder.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


def test_pyproject_lists_every_package_and_nothing_else() -> None:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = _packages_under(REPO / "llmq", "llmq")
    for package, folder in setuptools["package-dir"].items():
        on_disk |= _packages_under(REPO / folder, package)
    assert "llmq.migrations.versions" in on_disk  # the mapped folder was walked
    assert not on_disk - listed, f"missing from pyproject's packages: {sorted(on_disk - listed)}"
    assert not listed - on_disk, f"listed but not on disk: {sorted(listed - on_disk)}"


def test_one_import_root_for_the_product_code() -> None:
    """What `pip install .` puts on sys.path: llmq only (api/, workers/, tasks/ at the top of the
    repository are entry points for the frameworks, not installed)."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {package.split(".")[0] for package in setuptools["packages"]}
    assert roots == {"llmq"}

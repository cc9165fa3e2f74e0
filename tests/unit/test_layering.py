"""The package's layering, checked on the source: which part of llmq may import which.

Every `import` in every module of llmq/ counts, including those inside functions and under
`if TYPE_CHECKING:`: an import hidden in a function still ties the two modules together, and
is how cycles used to be kept from failing at import time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from functools import cache
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "llmq"

# --- the rules, as data ----------------------------------------------------------------------

# Everything imports these two; if they imported anything of llmq, that import would run first
# in every process and any module it reaches could never import settings or errors back.
# Settings may import errors only (its file errors are UserErrors): errors imports nothing.
LEAVES = {"llmq.errors": (), "llmq.settings": ("llmq.errors",)}

# The framework edges: the HTTP app, the Celery worker and its tasks, the command line, and the
# helpers that start or fake services. They may import the core; the core never imports them,
# so the core can be used (and tested) without FastAPI, Celery or a terminal.
EDGES = ("llmq.api", "llmq.workers", "llmq.tasks", "llmq.cli", "llmq.localstack", "llmq.testing")
# The edges the core must not reach (localstack and testing are tools a core module never
# imports either, but they import no framework, so only these four are forbidden).
FORBIDDEN_TO_CORE = ("llmq.api", "llmq.workers", "llmq.tasks", "llmq.cli")

# The API side of a job (HTTP routes, and admission once it is its own package) runs in the API
# process, which must not load the worker: its pipeline, provider calls, leases and tasks.
API_SIDE = ("llmq.api", "llmq.admission")
WORKER_SIDE = ("llmq.workers", "llmq.tasks", "llmq.execution")
# What of the worker side the API legitimately uses, and why. Nothing here imports the pipeline.
API_MAY_IMPORT = {
    # Handing a job to the queue: messages name their task by string, no task code is loaded.
    "llmq.workers.dispatch": "publishes job and batch messages",
    "llmq.workers.celery_app": "the Celery app the publisher sends through",
    "llmq.workers.telemetry": "request id and trace headers put on published messages",
    # Read-only views of the worker fleet for /health and /metrics.
    "llmq.workers.queues": "queue depths",
    "llmq.workers.heartbeat": "which workers are alive",
    # Pure functions the API must apply exactly as the worker does.
    "llmq.execution.routing": "the short-input route, decided identically for the estimate",
    "llmq.execution.output_review": "a response schema checked at submit as the worker will",
}


# --- the import graph ------------------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _is_package(module: str) -> bool:
    return modules()[module].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    # In a package's __init__, `.` is the package itself; in a module, its parent.
    keep = len(base) - node.level + (1 if _is_package(module) else 0)
    return ".".join(base[:keep] + ([node.module] if node.module else []))


def _known(name: str) -> str | None:
    """The llmq module `name` refers to: itself, or the closest enclosing package/module."""
    known = modules()
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports_of(module: str) -> Iterable[tuple[str, int]]:
    """(imported llmq module, line) for every import anywhere in `module`."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _known(alias.name)
                if target:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            for alias in node.names:
                # `from llmq.store import jobs` imports the module llmq.store.jobs;
                # `from llmq.store import claim_job` imports the package llmq.store.
                target = _known(f"{source}.{alias.name}") or _known(source)
                if target:
                    yield target, node.lineno


@cache
def graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line importing it}. Self-imports are left out."""
    edges: dict[str, dict[str, int]] = {}
    for module in modules():
        found = edges.setdefault(module, {})
        for target, line in _imports_of(module):
            if target != module:
                found.setdefault(target, line)
    return edges


def _within(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _packages_of(module: str) -> list[str]:
    """The packages Python imports before `module`: llmq.a.b -> [llmq, llmq.a]."""
    parts = module.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def _where(module: str, target: str) -> str:
    path = modules()[module].relative_to(ROOT.parent)
    return f"{path}:{graph()[module][target]} imports {target}"


# --- the tests -------------------------------------------------------------------------------


def test_the_graph_sees_the_package() -> None:
    """The walk must find the modules and their imports, or every rule below passes vacuously."""
    assert {"llmq.settings", "llmq.errors", "llmq.execution.pipeline"} <= set(modules())
    assert "llmq.settings" in graph()["llmq.workers.runtime"]


@pytest.mark.parametrize("leaf", LEAVES)
def test_settings_and_errors_import_nothing_of_llmq(leaf: str) -> None:
    wrong = [_where(leaf, target) for target in graph()[leaf] if target not in LEAVES[leaf]]
    assert not wrong, f"{leaf} must be a leaf:\n  " + "\n  ".join(wrong)


def test_the_core_never_imports_the_framework_edges() -> None:
    wrong = [
        _where(module, target)
        for module, targets in graph().items()
        if not _within(module, EDGES)
        for target in targets
        if _within(target, FORBIDDEN_TO_CORE)
    ]
    assert not wrong, "core modules importing api/workers/tasks/cli:\n  " + "\n  ".join(wrong)


def test_the_api_never_imports_worker_internals() -> None:
    wrong = [
        _where(module, target)
        for module, targets in graph().items()
        if _within(module, API_SIDE)
        for target in targets
        if _within(target, WORKER_SIDE) and target not in API_MAY_IMPORT
    ]
    assert not wrong, (
        "the API side imports worker internals (allowed: "
        + ", ".join(sorted(API_MAY_IMPORT))
        + "):\n  "
        + "\n  ".join(wrong)
    )


def test_the_api_process_never_loads_the_pipeline_or_the_tasks() -> None:
    """The allowed imports above must not pull the worker in behind them. Importing a module
    also runs its packages' __init__, so those count here too."""
    reached: set[str] = set()
    todo = [m for m in modules() if _within(m, API_SIDE)]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph()[module])
            todo.extend(_packages_of(module))
    # The packages around an allowed module are loaded with it (their __init__ is followed above).
    allowed = {p for m in API_MAY_IMPORT for p in _packages_of(m)} | set(API_MAY_IMPORT)
    loaded = sorted(m for m in reached if _within(m, WORKER_SIDE) and m not in allowed)
    assert not loaded, "the API's imports reach worker internals: " + ", ".join(loaded)


def _cycles() -> list[list[str]]:
    """One shortest cycle per strongly connected component of the import graph (Tarjan)."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        # Recursive; the package has a few hundred modules, far below the recursion limit.
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_shortest_cycle(sorted(c)[0], c) for c in components]


def _shortest_cycle(start: str, component: set[str]) -> list[str]:
    """start -> ... -> start, by breadth-first search inside its component."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in graph()[node]:
                if nxt not in component:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in a component without a cycle")


def test_no_import_cycles() -> None:
    described = []
    for cycle in _cycles():
        steps = [_where(a, b) for a, b in pairwise(cycle)]
        described.append(" -> ".join(cycle) + "\n    " + "\n    ".join(steps))
    assert not described, "import cycles:\n  " + "\n  ".join(described)

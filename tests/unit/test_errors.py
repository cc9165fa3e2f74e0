"""The error contract, read from the source with ast: every exception llmq defines derives from
LlmqError (so a caller can catch ours apart from a library's), no two share a name, and every job
error code written in the code base is a JobErrorCode member (the values clients read)."""

from __future__ import annotations

import ast
import builtins
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import llmq
from llmq.errors import JobErrorCode, LlmqError

SOURCE = Path(llmq.__file__).parent
BUILTIN_EXCEPTIONS = {
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}
# SQL that writes a job's error code as a literal, e.g. "... error_code = 'expired', ...".
SQL_ERROR_CODE = re.compile(r"error_code\s*=\s*'(\w+)'")
# Calls whose first argument becomes `jobs.error_code`: an output review's verdict, and a
# compatible API's field error (a rejected batch request is stored failed with its code).
CODE_FIRST_CALLS = {"Fail", "FieldError"}


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SOURCE.rglob("*.py")):
        if "migrations" not in path.relative_to(SOURCE).parts:
            yield str(path.relative_to(SOURCE.parent)), ast.parse(path.read_text(), str(path))


def _name(node: ast.expr) -> str | None:
    """`Base` or `module.Base` -> "Base"."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _class_bases() -> dict[str, list[tuple[str, list[str]]]]:
    """Class name -> every (file, base names) defining a class of that name."""
    classes: dict[str, list[tuple[str, list[str]]]] = defaultdict(list)
    for where, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [name for base in node.bases if (name := _name(base)) is not None]
                classes[node.name].append((where, bases))
    return classes


def _exception_classes() -> dict[str, list[tuple[str, list[str]]]]:
    classes = _class_bases()

    def is_exception(name: str, seen: frozenset[str] = frozenset()) -> bool:
        if name in BUILTIN_EXCEPTIONS or name.endswith(("Error", "Exception")):
            return True
        return name not in seen and any(
            is_exception(base, seen | {name})
            for _, bases in classes.get(name, [])
            for base in bases
        )

    return {name: defs for name, defs in classes.items() if is_exception(name)}


def test_every_exception_class_derives_from_llmq_error() -> None:
    exceptions = _exception_classes()

    def ours(name: str) -> bool:
        if name == LlmqError.__name__:
            return True
        # Every class of that name must get there (a name defined twice is ambiguous).
        defs = exceptions.get(name, [])
        return bool(defs) and all(any(ours(base) for base in bases) for _, bases in defs)

    foreign = sorted(
        f"{where}: class {name}({', '.join(bases)})"
        for name, defs in exceptions.items()
        for where, bases in defs
        if not ours(name)
    )
    assert not foreign, "derive these from llmq.errors.LlmqError:\n" + "\n".join(foreign)
    # The scan sees the hierarchy (not an empty set that would pass anything).
    assert {"UserError", "ProviderError", "TemplateError", "ApiRequestError"} <= set(exceptions)


def test_no_two_exception_classes_share_a_name() -> None:
    shared = {
        name: [where for where, _ in defs]
        for name, defs in _exception_classes().items()
        if len(defs) > 1
    }
    assert not shared, f"one name, one error: rename one of each {shared}"


def _written_error_codes(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, code) of every job error code written as a literal."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            literals = [kw.value for kw in node.keywords if kw.arg == "error_code"]
            if _name(node.func) in CODE_FIRST_CALLS and node.args:
                literals.append(node.args[0])
            for value in literals:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    yield value.lineno, value.value
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            for code in SQL_ERROR_CODE.findall(node.value):
                yield node.lineno, code


def test_the_error_code_scan_finds_each_way_a_code_is_written() -> None:
    source = """
Outcome(status=FAILED, error_code="a")
Fail("b", "why")
FieldError("c", "param", "why")
text("UPDATE jobs SET status = 'failed', error_code = 'd', finished_at = now()")
Outcome(status=FAILED, error_code=JobErrorCode.EXPIRED)
ProviderError("rate_limited", "not a job's code", retryable=True)
"""
    assert [code for _, code in _written_error_codes(ast.parse(source))] == ["a", "b", "c", "d"]


def test_every_job_error_code_written_in_the_code_is_a_job_error_code() -> None:
    known = {code.value for code in JobErrorCode}
    unknown = sorted(
        f"{where}:{line}: {code!r}"
        for where, tree in _modules()
        for line, code in _written_error_codes(tree)
        if code not in known
    )
    assert not unknown, "add these to llmq.errors.JobErrorCode (the API contract):\n" + "\n".join(
        unknown
    )

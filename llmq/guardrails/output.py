"""Output checks: destructive commands in model output are blocked; empty output is rejected.

The patterns look for the *runnable* shape of a command (SQL keywords with an identifier and a
statement end, `rm` with a recursive flag aimed at / or ~, ...), so prose that merely mentions
"drop table stakes" or "rm -rf ./build" passes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from .base import Finding, Verdict

_I = re.IGNORECASE
# "The DROP TABLE statement removes a table" explains SQL; it names no table.
_IDENT = (
    r"(?!(?:statements?|clauses?|commands?|keywords?|syntax|quer(?:y|ies)|privileges?"
    r"|permissions?|operations?)\b)[\w\"`\[\]]+(?:\.[\w\"`\[\]]+)*"
)
# Line-scanning quantifiers below are bounded ({0,200}, {0,300}) so a long one-line output with many
# trigger words cannot make a search quadratic.
# A shell word ends at whitespace, a statement separator, a closing quote/bracket or the text end.
_WORD_END = r"(?=$|[\s;&|\"'`)\]])"


def _sql(keywords: str) -> str:
    """SQL `keywords` (written upper-case here) followed by an identifier: upper-case keywords are
    how SQL is written; lower-case ones count only when the statement visibly ends (`;`,
    CASCADE/RESTRICT) or says IF EXISTS, since "we drop table stakes" is English."""
    return (
        rf"(?-i:\b{keywords}\b)\s+{_IDENT}"
        rf"|\b{keywords}\s+(?:IF\s+EXISTS\s+{_IDENT}|{_IDENT}\s*(?:;|\b(?:CASCADE|RESTRICT)\b))"
    )


_DELETE_FROM = re.compile(rf"\bDELETE\s+FROM\s+{_IDENT}", _I)
# A WHERE that filters nothing is no WHERE at all.
_WHERE = re.compile(r"\bWHERE\b(?!\s+(?:1\s*=\s*1|true|'1'\s*=\s*'1'|1)\s*(?:;|$))", _I | re.M)
# The statement runs to `;`, a blank line, a code fence, the next DELETE or the end of the text.
_STATEMENT_END = re.compile(r";|\n\s*\n|```")
_BLANK = re.compile(r"\s*")


def _delete_without_where(text: str) -> bool:
    # Searches use pos/endpos instead of slicing, and each span is scanned once, so long outputs
    # with many DELETEs stay linear.
    matches = list(_DELETE_FROM.finditer(text))
    end_at, semicolon = -1, False  # the current statement end, once found
    for i, match in enumerate(matches):
        if end_at < match.end():
            end = _STATEMENT_END.search(text, match.end())
            end_at, semicolon = (end.start(), end.group(0) == ";") if end else (len(text), False)
        stop = min(end_at, matches[i + 1].start()) if i + 1 < len(matches) else end_at
        # Lower-case "delete from the list ..." is English; only trust it as SQL when it ends in ;
        # right after the table name.
        if match.group(0)[:6] != "DELETE":
            terminated = semicolon and end_at == stop
            if not (terminated and _BLANK.fullmatch(text, match.end(), stop)):
                continue
        if not _WHERE.search(text, match.end(), stop):
            return True
    return False


_RM_ROOT = re.compile(
    r"\brm\s+(?P<flags>(?:-[\w-]+\s+)+)[\"']?"
    r"(?:/\*?|~/?\*?|\$\{?HOME\}?/?\*?)[\"']?" + _WORD_END,
    re.MULTILINE,
)


def _rm_rf_root(text: str) -> bool:
    for match in _RM_ROOT.finditer(text):
        flags = match.group("flags").split()
        short = "".join(f[1:] for f in flags if not f.startswith("--"))
        if "r" in short or "R" in short or "--recursive" in flags:
            return True
    return False


def _search(pattern: str) -> Callable[[str], bool]:
    compiled = re.compile(pattern, _I)
    return lambda text: compiled.search(text) is not None


@dataclass(frozen=True)
class Rule:
    """`matches` runs only if the lower-cased text contains one of `triggers`, which every match
    necessarily includes: a substring test is far cheaper than the regex on long outputs."""

    triggers: tuple[str, ...]
    matches: Callable[[str], bool]


UNSAFE: dict[str, Rule] = {
    "drop_table": Rule(("drop",), _search(_sql(r"DROP\s+(?:TABLE|DATABASE|SCHEMA)"))),
    "truncate_table": Rule(("truncate",), _search(_sql(r"TRUNCATE\s+TABLE"))),
    "delete_without_where": Rule(("delete",), _delete_without_where),
    "rm_rf_root": Rule(("rm",), _rm_rf_root),
    "chmod_777": Rule(("chmod",), _search(r"\bchmod\s+(?:-[a-zA-Z]+\s+)*0?777\b")),
    "mkfs": Rule(("mkfs",), _search(r"\bmkfs(?:\.\w+)?\b[^\n]{0,200}?\s/dev/\w")),
    "dd_to_disk": Rule(
        ("of=/dev/",),
        _search(
            r"\bdd\s+(?:[^\n]{0,200}?\s)?of=/dev/(?:sd[a-z]|hd[a-z]|vd[a-z]|xvd[a-z]|nvme\d|mmcblk\d"
            r"|r?disk\d)"
        ),
    ),
    "fork_bomb": Rule(
        ("()",),
        _search(r"(?P<f>:|\b\w+)\s*\(\)\s*\{\s*(?P=f)\s*\|\s*(?P=f)\s*&\s*\}\s*;?\s*(?P=f)"),
    ),
    "eval_encoded_payload": Rule(
        ("eval", "exec", "base64"),
        _search(
            r"\b(?:eval|exec)\s*\(\s*(?:base64\.b64decode|b64decode|base64_decode|atob|Buffer\.from"
            r"|bytes\.fromhex|codecs\.decode|zlib\.decompress|gzinflate|str_rot13|marshal\.loads"
            r"|__import__\(\s*[\"'](?:base64|zlib|marshal|codecs)[\"']\s*\))"
            r"|\bbase64\s+(?:-d|--decode|-D)\b[^\n|]{0,200}\|\s*(?:sudo\s+)?(?:ba|z|da|k)?sh\b"
        ),
    ),
    "pipe_to_shell": Rule(
        ("curl", "wget"),
        _search(
            r"\b(?:curl|wget)\b[^\n]{0,300}?\|\s*(?:sudo\s+(?:-\S+\s+)*)?(?:ba|z|da|k|fi)?sh\b"
            r"|\b(?:ba|z)?sh\s+(?:-c\s+)?[\"']?(?:\$\(|<\()\s*(?:curl|wget)\b"
        ),
    ),
}
# The letters re.IGNORECASE equates with ASCII ones besides their own cases ("\u0131" ~ "i"),
# mapped before lower-casing so the trigger test can never miss what the regex would match.
_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})


class UnsafeOutputGuard:
    name = "unsafe_output"

    def check(self, text: str) -> Verdict:
        lowered = text.translate(_FOLD).lower()
        for name, rule in UNSAFE.items():
            if any(t in lowered for t in rule.triggers) and rule.matches(text):
                full = f"{self.name}.{name}"
                return Verdict(text=text, findings=(Finding(full, "block"),), blocked_by=full)
        return Verdict(text=text)


# Zero-width characters are not whitespace to str.strip(), but an answer made of them is empty.
_INVISIBLE = re.compile("[\u200b-\u200d\u2060\ufeff]")


class EmptyOutputGuard:
    name = "empty_output"

    def check(self, text: str) -> Verdict:
        if not _INVISIBLE.sub("", text).strip():
            return Verdict(text=text, findings=(Finding(self.name, "block"),), blocked_by=self.name)
        return Verdict(text=text)

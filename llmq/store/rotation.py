"""`llmq keys rotate-data`: bring every stored text under the newest encryption key.

Rows are picked in SQL by what they hold: a value in clear (written before encryption was on)
or sealed under another key id (crypto.PREFIX + key id). Each batch is one short transaction
that locks its rows (FOR UPDATE), opens them with any configured key and seals them with the
newest, so a worker writing the same row waits a moment and its value is never overwritten by
an older one. Nothing keeps state between runs: a re-run, or a run after a crash, picks up
whatever is still not under the newest key. The API and the workers keep running throughout:
they read both forms as long as the old key is still in LLMQ_ENCRYPTION_KEYS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text

from llmq.store import crypto

BATCH_ROWS = 500


def _text_stale(column: str) -> str:
    return f"({column} IS NOT NULL AND {column} <> '' AND NOT starts_with({column}, :newest))"


_SECRET_ARRAY = "ARRAY[" + ", ".join(f"'{name}'" for name in crypto.SECRET_PARAMS) + "]"
_PARAMS_STALE = (
    f"(jsonb_exists_any(params, {_SECRET_ARRAY}) OR "
    f"(jsonb_exists(params, '{crypto.SEALED_PARAMS}') AND "
    f"NOT starts_with(params->>'{crypto.SEALED_PARAMS}', :newest)))"
)

# table -> (key column, columns, the WHERE clause of a row that needs re-sealing)
_TABLES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "jobs": (
        "id",
        ("input", "result", "params"),
        f"({_text_stale('input')} OR {_text_stale('result')} OR {_PARAMS_STALE})",
    ),
    "attempts": ("id", ("output",), _text_stale("output")),
    "eval_log": ("id", ("output",), _text_stale("output")),
    "compat_files": (
        "id",
        ("content",),
        # bytea: compare the first bytes with the newest prefix.
        "(substring(content FROM 1 FOR :plen) <> convert_to(:newest, 'UTF8'))",
    ),
}


@dataclass
class RotationReport:
    rows: dict[str, int] = field(default_factory=lambda: {t: 0 for t in _TABLES})
    batches: int = 0


def _reseal(column: str, value: Any, cipher: crypto.Cipher) -> Any:
    if value is None:
        return None
    if column == "params":
        return json.dumps(_reseal_params(value, cipher))
    if column == "content":
        return cipher.encrypt_bytes(cipher.decrypt_bytes(bytes(value)))
    if value == "" or value.startswith(cipher.newest):
        return value
    return cipher.encrypt(cipher.decrypt(value))


def _reseal_params(stored: dict[str, Any], cipher: crypto.Cipher) -> dict[str, Any]:
    out = dict(stored)
    sealed = out.pop(crypto.SEALED_PARAMS, None)
    secret = json.loads(cipher.decrypt(sealed)) if isinstance(sealed, str) else {}
    for name in crypto.SECRET_PARAMS:
        if name in out:
            secret[name] = out.pop(name)
    if secret:
        out[crypto.SEALED_PARAMS] = cipher.encrypt(json.dumps(secret, separators=(",", ":")))
    return out


def rotate_data(
    engine: Engine,
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[str, int], None] | None = None,
) -> RotationReport:
    """Re-seal every row not under the newest key, `batch_rows` per transaction. Raises
    ValueError without keys (there is nothing to rotate to)."""
    cipher = crypto.cipher()
    if cipher is None:
        raise ValueError("LLMQ_ENCRYPTION_KEYS is not set: there is no key to rotate data to")
    report = RotationReport()
    for table, (pk, columns, stale) in _TABLES.items():
        after: Any = None
        while True:
            keyset = f"AND {pk} > :after " if after is not None else ""
            params = {
                "newest": cipher.newest,
                "plen": len(cipher.newest),
                "after": after,
                "n": batch_rows,
            }
            with engine.begin() as conn:
                rows = conn.execute(
                    text(
                        f"SELECT {pk}, {', '.join(columns)} FROM {table} "
                        f"WHERE {stale} {keyset}ORDER BY {pk} LIMIT :n FOR UPDATE"
                    ),
                    params,
                ).all()
                if not rows:
                    break
                updates = [
                    {"pk": row[0]}
                    | {c: _reseal(c, v, cipher) for c, v in zip(columns, row[1:], strict=True)}
                    for row in rows
                ]
                sets = ", ".join(
                    f"{c} = CAST(:{c} AS jsonb)" if c == "params" else f"{c} = :{c}"
                    for c in columns
                )
                conn.execute(text(f"UPDATE {table} SET {sets} WHERE {pk} = :pk"), updates)
            report.rows[table] += len(rows)
            report.batches += 1
            after = rows[-1][0]
            if progress is not None:
                progress(table, report.rows[table])
    return report

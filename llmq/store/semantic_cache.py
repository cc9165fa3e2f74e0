"""The semantic cache's SQL (pgvector): entries, nearest-neighbour lookups, housekeeping.

The table exists only where the server offers pgvector (migrations/versions/0012_semantic_cache.py);
`unavailable` says why it cannot be used. An entry points at the job that answered: the answer is
read from that job (decrypted like any result), so a deleted job takes its entries with it and a
job that is not (or no longer) succeeded is never served.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from llmq.store import crypto

DIMENSIONS = 1536  # the column's size (the migration's DIMENSIONS)
GLOBAL_SCOPE = "global"
# Candidates the HNSW graph walk keeps: the equality filters are applied to what it returns, so
# it must see past other partitions' neighbours (pgvector's default is 40).
EF_SEARCH = 100
# A partition of at most this many entries is scanned exactly (a few ms: every vector read).
EXACT_MAX = 500


@dataclass(frozen=True)
class Partition:
    """What must be equal for an answer to be reused; only the question may differ."""

    scope: str  # a tenant id, or GLOBAL_SCOPE
    template: str
    template_version: int
    chain: str
    params_hash: str
    embedding_model: str


@dataclass(frozen=True)
class Match:
    source_job_id: uuid.UUID
    similarity: float
    result: str
    provider: str | None
    model: str | None


def unavailable(engine: Engine) -> str | None:
    """Why the semantic cache cannot be used on this database, or None when it can."""
    with engine.connect() as conn:
        installed = conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'"))
        if installed.first() is None:
            offered = conn.execute(
                text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
            ).first()
            return (
                "the pgvector extension is not installed in this database"
                if offered is not None
                else "this PostgreSQL server has no pgvector extension"
            )
        if conn.execute(text("SELECT to_regclass('semantic_cache')")).scalar() is None:
            return "the semantic_cache table is missing (run `llmq migrate`)"
    return None


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form; zeros kept short (hashed bag-of-words vectors are mostly zero)."""
    return "[" + ",".join("0" if v == 0 else format(v, ".7g") for v in vector) + "]"


def _partition_params(p: Partition) -> dict[str, Any]:
    return {
        "scope": p.scope,
        "template": p.template,
        "version": p.template_version,
        "chain": p.chain,
        "params_hash": p.params_hash,
        "model": p.embedding_model,
    }


_IN_PARTITION = (
    "scope = :scope AND template = :template AND template_version = :version "
    "AND chain = :chain AND params_hash = :params_hash AND embedding_model = :model "
    "AND expires_at > now()"
)


def insert(
    engine: Engine,
    partition: Partition,
    vector: Sequence[float],
    source_job_id: uuid.UUID,
    ttl_s: float,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO semantic_cache (scope, template, template_version, chain, "
                "params_hash, embedding_model, embedding, source_job_id, expires_at) "
                "VALUES (:scope, :template, :version, :chain, :params_hash, :model, "
                "CAST(:vector AS vector), :job, now() + make_interval(secs => :ttl))"
            ),
            {
                **_partition_params(partition),
                "vector": vector_literal(vector),
                "job": source_job_id,
                "ttl": ttl_s,
            },
        )


def nearest(
    engine: Engine,
    partition: Partition,
    vector: Sequence[float],
    min_similarity: float,
    tenant_id: uuid.UUID | None,
) -> Match | None:
    """The closest live entry of the partition at cosine similarity >= min_similarity, with its
    answer; `tenant_id` (None only under the global scope) must also own the source job."""
    params = {**_partition_params(partition), "q": vector_literal(vector)}
    # HNSW filters after its walk: a partition that is a small share of the table may have
    # none (or not its nearest) among the walk's candidates. So a small partition is scanned
    # exactly through its btree index (`+ 0`: HNSW cannot serve that order); a larger one is
    # walked (enable_sort off: else a planner that misjudges the partition's size sorts it
    # all), and scanned exactly only if none of the walk's candidates was in it.
    graph = ("off", "embedding <=> CAST(:q AS vector)")
    exact = ("on", "(embedding <=> CAST(:q AS vector)) + 0")
    with engine.begin() as conn:
        size = conn.execute(
            text(
                f"SELECT count(*) FROM (SELECT 1 FROM semantic_cache WHERE {_IN_PARTITION} "
                f"LIMIT {EXACT_MAX + 1}) p"
            ),
            params,
        ).scalar()
        if not size:
            return None
        conn.execute(text(f"SET LOCAL hnsw.ef_search = {EF_SEARCH}"))
        for sort, order in (exact,) if size <= EXACT_MAX else (graph, exact):
            conn.execute(text(f"SET LOCAL enable_sort = {sort}"))
            row = (
                conn.execute(
                    text(
                        "WITH near AS (SELECT source_job_id, "
                        "embedding <=> CAST(:q AS vector) AS distance FROM semantic_cache "
                        f"WHERE {_IN_PARTITION} ORDER BY {order} LIMIT 1) "
                        "SELECT near.source_job_id, near.distance, j.status, j.tenant_id, "
                        "j.result, j.provider, j.model "
                        "FROM near LEFT JOIN jobs j ON j.id = near.source_job_id"
                    ),
                    params,
                )
                .mappings()
                .first()
            )
            if row is None:
                continue
            similarity = 1.0 - float(row["distance"])
            if (
                similarity < min_similarity
                or row["status"] != "succeeded"
                or row["result"] is None
                or (tenant_id is not None and row["tenant_id"] != tenant_id)
            ):
                return None
            return Match(
                source_job_id=row["source_job_id"],
                similarity=similarity,
                result=crypto.decrypt(row["result"]),
                provider=row["provider"],
                model=row["model"],
            )
    return None


HNSW_INDEX = (
    "CREATE INDEX ix_semantic_cache_embedding ON semantic_cache "
    "USING hnsw (embedding vector_cosine_ops)"
)


def bulk_insert(
    engine: Engine,
    rows: Iterable[tuple[Partition, Sequence[float] | str, uuid.UUID]],
    ttl_s: float,
    reindex: bool = False,
) -> int:
    """COPY many entries at once (benchmarks, warm-up); a vector may be given as its literal.
    `reindex`: drop the HNSW index first and build it after (pgvector's advice for bulk loads:
    one build is far faster than an insert into the graph per row); lookups wait meanwhile."""
    count = 0
    columns = (
        "scope, template, template_version, chain, params_hash, embedding_model, embedding, "
        "source_job_id, expires_at"
    )
    with engine.begin() as conn:
        # A bulk load (and an index build over it) takes minutes, not a statement's limit.
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        if reindex:
            conn.execute(text("DROP INDEX IF EXISTS ix_semantic_cache_embedding"))
        expires = conn.execute(
            text("SELECT now() + make_interval(secs => :ttl)"), {"ttl": ttl_s}
        ).scalar()
        raw = conn.connection.driver_connection
        assert raw is not None
        copy = f"COPY semantic_cache ({columns}) FROM STDIN"
        with raw.cursor() as cursor, cursor.copy(copy) as cp:
            for p, vector, job_id in rows:
                literal = vector if isinstance(vector, str) else vector_literal(vector)
                cp.write_row(
                    (
                        p.scope, p.template, p.template_version, p.chain, p.params_hash,
                        p.embedding_model, literal, job_id, expires,
                    )
                )  # fmt: skip
                count += 1
        if reindex:
            conn.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
            conn.execute(text(HNSW_INDEX))
    return count


def stats(engine: Engine) -> dict[str, Any]:
    """Entries (live and expired), scopes, and the newest entry."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*) AS entries, count(*) FILTER (WHERE expires_at <= now()) "
                "AS expired, count(DISTINCT scope) AS scopes, max(created_at) AS newest "
                "FROM semantic_cache"
            )
        ).mappings()
        return dict(row.one())


def clear(engine: Engine, scope: str | None = None, expired_only: bool = False) -> int:
    """Delete entries (of one scope, or only the expired ones); how many were deleted."""
    where = ["TRUE"]
    if scope is not None:
        where.append("scope = :scope")
    if expired_only:
        where.append("expires_at <= now()")
    with engine.begin() as conn:
        result = conn.execute(
            text(f"DELETE FROM semantic_cache WHERE {' AND '.join(where)}"), {"scope": scope}
        )
        return int(result.rowcount or 0)

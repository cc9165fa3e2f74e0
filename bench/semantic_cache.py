"""The semantic cache (pgvector): lookup latency as the table grows, recall, and the provider
chat calls it saves.

    .venv/bin/python bench/semantic_cache.py [--sizes 10000,100000] [--queries 300]
                                             [--batch 300] [--quick]

1. Lookups. Synthetic questions (8-12 words from a 5000-word vocabulary) are embedded with the
   fake provider's hashed bag of words (llmq/testing/fake_embeddings.py, the vectors tests see)
   and COPYed straight into the table through the store (llmq/store/semantic_cache.py), spread
   over 4 tenants, until each size is reached (one COPY, then one HNSW build). At each size,
   `nearest` (the pipeline's lookup: HNSW, or an exact scan of a small partition) is timed
   for near-duplicates of stored questions (words shuffled, one word added: cosine >= 0.9 by
   construction) and for fresh unrelated questions, after 50 untimed warm-up lookups;
   recall = near-duplicates found at threshold 0.9, false hits = unrelated questions answered.
   A small tenant (200 entries) is scanned exactly (the HNSW walk filters after the fact).
2. Calls saved. A batch of questions of which 30% are rewordings of earlier ones (same content
   words: shuffled, other case and punctuation, filler words) runs through the real pipeline
   (Postgres job store, fake provider through the OpenAI SDK) three times in the same run:
   no cache (the baseline), the exact Redis cache, and the semantic cache at its default
   threshold (0.95). Chat calls are counted by the fake provider (/_fake/stats).

Prints a table and writes bench/results/semantic_cache.json.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import redis

from bench.harness import bench_services, fake_provider, write_results
from llmq import store
from llmq.cost.pricing import load_price_table
from llmq.execution.cache import ResultCache
from llmq.execution.pipeline import Pipeline, PipelineConfig
from llmq.execution.semantic_cache import SemanticCache, params_hash
from llmq.providers.embeddings import Embedder
from llmq.providers.local import LocalProvider
from llmq.providers.openai_provider import OpenAIProvider
from llmq.resilience.retry import RetryPolicy
from llmq.store import semantic_cache as entries
from llmq.store.job_store import PostgresJobStore
from llmq.testing.fake_embeddings import embed

CHAIN = ["openai:gpt-4o-mini"]
EMBEDDING = "openai:text-embedding-3-small"
LOOKUP_THRESHOLD = 0.9
FILLERS = ["please", "tell me", "what is", "which is", "and", "the"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3))


def _question(rng: random.Random, vocab: list[str]) -> list[str]:
    return rng.sample(vocab, rng.randint(8, 12))


def _near(rng: random.Random, words: list[str], vocab: list[str]) -> str:
    """Shuffled, one content word added: cosine >= 8/sqrt(8*9) = 0.94 for 8 words."""
    shuffled = [*words, rng.choice(vocab)]
    rng.shuffle(shuffled)
    return " ".join(shuffled)


def _reworded(rng: random.Random, words: list[str]) -> str:
    """The same content words, other order, case, punctuation and filler words (cosine 1)."""
    shuffled = list(words)
    rng.shuffle(shuffled)
    cut = rng.randint(1, len(shuffled) - 1)
    head, tail = " ".join(shuffled[:cut]), " ".join(shuffled[cut:])
    return f"{rng.choice(FILLERS).capitalize()} {head.upper()}, {rng.choice(FILLERS)} {tail}?"


def _succeeded_job(engine: Any, tenant_id: uuid.UUID, answer: str) -> uuid.UUID:
    """A finished job for entries to point at (the answer is read from it)."""
    job_id = store.insert_job(
        engine, tenant_id=tenant_id, template="prompt", template_version=1,
        priority="default", chain=CHAIN, item=store.NewJob(input="seed"),
    )  # fmt: skip
    jobs = PostgresJobStore(engine)
    assert jobs.claim_job(str(job_id), "bench", 60) is not None
    jobs.finish_job(job_id, "bench", store.Outcome(status="succeeded", result=answer))
    return job_id


def _tenant(engine: Any, name: str) -> uuid.UUID:
    principal = store.authenticate(engine, store.create_api_key(engine, name))
    assert principal is not None
    return principal.tenant_id


def _partition(tenant_id: uuid.UUID) -> entries.Partition:
    return entries.Partition(
        scope=str(tenant_id), template="prompt", template_version=1, chain=",".join(CHAIN),
        params_hash=params_hash({}), embedding_model=EMBEDDING,
    )  # fmt: skip


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lookups(engine: Any, sizes: list[int], queries: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    vocab = sorted({_word(rng) for _ in range(6000)})[:5000]
    tenants = [_tenant(engine, f"bench-sem-{i}-{uuid.uuid4().hex[:6]}") for i in range(4)]
    small = _tenant(engine, f"bench-sem-small-{uuid.uuid4().hex[:6]}")
    sources = {t: _succeeded_job(engine, t, f"answer of {t}") for t in [*tenants, small]}
    stored: dict[uuid.UUID, list[list[str]]] = {t: [] for t in [*tenants, small]}

    def rows(owners: list[uuid.UUID]) -> Iterator[tuple[entries.Partition, str, uuid.UUID]]:
        for tenant in owners:
            words = _question(rng, vocab)
            stored[tenant].append(words)
            vector = entries.vector_literal(embed(" ".join(words)))
            yield _partition(tenant), vector, sources[tenant]

    entries.bulk_insert(engine, rows([small] * 200), ttl_s=86_400)
    results = []
    total = 0
    for size in sizes:
        started = time.perf_counter()
        owners = [tenants[i % len(tenants)] for i in range(total, size)]
        # One COPY, then one HNSW build (reindex): far faster than a graph insert per row.
        total += entries.bulk_insert(engine, rows(owners), ttl_s=86_400, reindex=True)
        load_s = time.perf_counter() - started

        def timed(tenant: uuid.UUID, text: str) -> tuple[float, entries.Match | None]:
            begin = time.perf_counter()
            match = entries.nearest(
                engine, _partition(tenant), embed(text), LOOKUP_THRESHOLD, tenant
            )
            return (time.perf_counter() - begin) * 1000, match

        for _ in range(50):  # warm up: the new index's pages into memory, not timed
            tenant = rng.choice(tenants)
            timed(tenant, _near(rng, rng.choice(stored[tenant]), vocab))
        near_ms, found = [], 0
        for _ in range(queries):
            tenant = rng.choice([t for t in tenants if stored[t]])
            ms, match = timed(tenant, _near(rng, rng.choice(stored[tenant]), vocab))
            near_ms.append(ms)
            found += match is not None and match.source_job_id == sources[tenant]
        far_ms, false_hits = [], 0
        for _ in range(queries):
            ms, match = timed(rng.choice(tenants), " ".join(_question(rng, vocab)))
            far_ms.append(ms)
            false_hits += match is not None
        small_ms, small_found = [], 0
        for _ in range(max(20, queries // 5)):
            ms, match = timed(small, _near(rng, rng.choice(stored[small]), vocab))
            small_ms.append(ms)
            small_found += match is not None
        row = {
            "entries": total + 200,
            "load_s": round(load_s, 1),
            "near_p50_ms": round(statistics.median(near_ms), 2),
            "near_p99_ms": round(_percentile(near_ms, 0.99), 2),
            "unrelated_p50_ms": round(statistics.median(far_ms), 2),
            "unrelated_p99_ms": round(_percentile(far_ms, 0.99), 2),
            "recall": round(found / queries, 4),
            "false_hits": false_hits,
            "small_tenant_p50_ms": round(statistics.median(small_ms), 2),
            "small_tenant_recall": round(small_found / len(small_ms), 4),
        }
        results.append(row)
        print(
            f"{row['entries']:>7} entries  near-dup p50 {row['near_p50_ms']:6.2f} ms  "
            f"p99 {row['near_p99_ms']:6.2f} ms  recall {row['recall']:.3f}  | unrelated p50 "
            f"{row['unrelated_p50_ms']:6.2f} ms p99 {row['unrelated_p99_ms']:6.2f} ms  "
            f"false hits {false_hits}  | small tenant p50 {row['small_tenant_p50_ms']:.2f} ms "
            f"recall {row['small_tenant_recall']:.3f}  (loaded in {row['load_s']} s)",
            flush=True,
        )
    return results


def _batch(size: int, seed: int = 11) -> list[str]:
    """`size` questions, 30% of them rewordings of earlier ones, in submission order."""
    rng = random.Random(seed)
    vocab = sorted({_word(rng) for _ in range(3000)})
    originals: list[list[str]] = []
    batch: list[str] = []
    for i in range(size):
        if i % 10 in (3, 6, 9):  # 3 in every 10, after their originals
            batch.append(_reworded(rng, rng.choice(originals)))
        else:
            words = _question(rng, vocab)
            originals.append(words)
            batch.append(" ".join(words) + "?")
    return batch


def calls_saved(engine: Any, fake_url: str, redis_url: str, size: int) -> dict[str, Any]:
    timeouts = {"connect_timeout_s": 2.0, "read_timeout_s": 10.0}
    base_url = f"{fake_url}/v1"
    prices = load_price_table()
    questions = _batch(size)
    client = redis.Redis.from_url(redis_url)

    def run(label: str, semantic: bool, exact: bool) -> dict[str, Any]:
        tenant = _tenant(engine, f"bench-sem-{label}-{uuid.uuid4().hex[:6]}")
        cache = None
        if semantic:
            embedder = Embedder(EMBEDDING, "bench", base_url, dimensions=entries.DIMENSIONS,
                                **timeouts)  # fmt: skip
            cache = SemanticCache(engine, embedder, prices, scope="tenant",
                                  default_threshold=0.95, ttl_s=3600)  # fmt: skip
        pipeline = Pipeline(
            PostgresJobStore(engine),
            {"openai": OpenAIProvider("bench", base_url, **timeouts), "local": LocalProvider()},
            prices,
            PipelineConfig(lease_s=60, retry=RetryPolicy(max_attempts=1)),
            cache=ResultCache(client, 3600) if exact else None,
            semantic=cache,
        )
        httpx.post(f"{fake_url}/_fake/reset", timeout=10).raise_for_status()
        started = time.perf_counter()
        hits = 0
        cost = 0.0
        for question in questions:
            job_id = store.insert_job(
                engine, tenant_id=tenant, template="prompt", template_version=1,
                priority="default", chain=CHAIN, item=store.NewJob(input=question, params={}),
            )  # fmt: skip
            assert pipeline.run(str(job_id)) == "succeeded"
            job = store.get_job(engine, tenant, job_id)
            assert job is not None
            hits += bool(job["cache_hit"])
            cost += float(job["cost_usd"] or 0)
        seconds = time.perf_counter() - started
        by_api = httpx.get(f"{fake_url}/_fake/stats", timeout=10).json()["by_api"]
        return {
            "setup": label,
            "jobs": len(questions),
            "chat_calls": by_api.get("openai", 0),
            "embedding_calls": by_api.get("embeddings", 0),
            "cache_hits": hits,
            "cost_usd": round(cost, 6),
            "seconds": round(seconds, 2),
        }

    runs = [
        run("no cache", semantic=False, exact=False),
        run("exact cache", semantic=False, exact=True),
        run("semantic cache", semantic=True, exact=True),
    ]
    baseline = runs[0]["chat_calls"]
    for r in runs:
        r["chat_calls_saved"] = round(1 - r["chat_calls"] / baseline, 4)
        r["cost_vs_baseline"] = round(r["cost_usd"] / runs[0]["cost_usd"], 4)
        print(
            f"{r['setup']:15s} {r['jobs']} jobs  chat calls {r['chat_calls']:4d} "
            f"(saved {r['chat_calls_saved']:.0%})  embedding calls {r['embedding_calls']:4d}  "
            f"hits {r['cache_hits']:4d}  cost x{r['cost_vs_baseline']:.3f}  {r['seconds']} s",
            flush=True,
        )
    return {"near_duplicate_share": 0.3, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000", help="cached entries, ascending")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--batch", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="2000 entries, few queries")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.queries, args.batch = "2000", 50, 60
    sizes = [int(s) for s in args.sizes.split(",")]
    with fake_provider(latency_ms=0) as fake, bench_services("semantic_cache", fake) as svc:
        if entries.unavailable(svc.engine) is not None:
            sys.exit(f"semantic cache unavailable: {entries.unavailable(svc.engine)}")
        print("lookups (HNSW cosine, ef_search 100, 4 tenants + a small one):", flush=True)
        table = lookups(svc.engine, sizes, args.queries)
        print(f"\nbatch with 30% near-duplicates ({args.batch} jobs), same run:", flush=True)
        saved = calls_saved(svc.engine, fake.url, svc.env["REDIS_URL"], args.batch)
    write_results(
        "semantic_cache",
        {
            "command": "python bench/semantic_cache.py " + " ".join(sys.argv[1:]),
            # Other work on the machine shows in every latency: say how busy it was.
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            "dimensions": entries.DIMENSIONS,
            "lookup_threshold": LOOKUP_THRESHOLD,
            "lookups": table,
            "calls_saved": saved,
        },
    )


if __name__ == "__main__":
    main()

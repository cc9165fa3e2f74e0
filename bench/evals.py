"""What shadow runs cost a worker and the report, in CPU.

    .venv/bin/python bench/evals.py [--rounds 20] [--pairs 10000]

1. Scoring: a shadowed job's eval row is scored offline (llmq/evals/scores.py) when it finishes.
   Measured on the 22 sample documents (llmq/samples) with an extractive summary as the answer,
   against a baseline every job already pays in the same run: its input guardrails (the default
   chains, llmq/guardrails/job_guard.py) on the same documents.
2. The report (llmq/evals/report.py) over `--pairs` pairs (two eval rows each), against decoding
   those rows' scores from JSON (what reading them costs anyway).
Prints two lines and writes bench/results/evals.json. No services.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import write_results
from llmq.evals import report, scores
from llmq.guardrails.job_guard import guard_job
from llmq.guardrails.selection import GuardrailSelection
from llmq.longdocs.summarizer import summarize_extractive
from llmq.settings import Settings
from llmq.templates import TEMPLATES, get_template

SAMPLES = Path(__file__).resolve().parents[1] / "llmq" / "samples"


def cpu_us(call: Callable[[str, str], object], items: list[tuple[str, str]], rounds: int) -> float:
    for document, answer in items:  # warm up (regex compilation, caches)
        call(document, answer)
    start = time.process_time()
    for _ in range(rounds):
        for document, answer in items:
            call(document, answer)
    return (time.process_time() - start) / (rounds * len(items)) * 1e6


def report_rows(pairs: int) -> list[report.EvalRecord]:
    rng = random.Random(0)
    rows = []
    for i in range(pairs):
        for role, variant, base in (("primary", "v1 a", 0.9), ("shadow", "v2 b", 0.8)):
            rows.append(
                report.EvalRecord(
                    f"p{i}", role, variant, "succeeded", rng.uniform(1e-4, 1e-3),
                    rng.uniform(200, 900),
                    {name: min(1.0, rng.gauss(base, 0.1)) for name in
                     ("numbers_kept", "entities_kept", "compression", "output_chars")},
                )
            )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=10_000)
    args = parser.parse_args()

    settings = Settings()
    template = get_template("summarize")
    guards = GuardrailSelection(
        settings.input_guardrails, settings.output_guardrails, templates=TEMPLATES.values()
    ).input_for(template)
    documents = [p.read_text(encoding="utf-8") for p in sorted(SAMPLES.glob("*.txt"))]
    items = [(doc, summarize_extractive(doc)) for doc in documents]
    scoring = cpu_us(lambda doc, answer: scores.score(answer, doc), items, args.rounds)
    guarding = cpu_us(lambda doc, _: guard_job(guards, template, doc, {}), items, args.rounds)
    chars = sum(len(doc) for doc in documents) // len(documents)
    print(
        f"evals scoring: {scoring:.0f} us CPU per shadowed job vs {guarding:.0f} us for the input "
        f"guardrails every job runs (ratio {scoring / guarding:.2f}; {len(items)} documents, "
        f"mean {chars} chars)"
    )

    rows = report_rows(args.pairs)
    encoded = [json.dumps(r.scores) for r in rows]
    start = time.process_time()
    for text in encoded:
        json.loads(text)
    decode_ms = (time.process_time() - start) * 1e3
    start = time.process_time()
    built = report.build(rows)
    build_ms = (time.process_time() - start) * 1e3
    diff = built[1].vs_primary["numbers_kept"]
    print(
        f"evals report: {build_ms:.0f} ms CPU for {args.pairs} pairs vs {decode_ms:.0f} ms to "
        f"decode their scores from JSON (ratio {build_ms / decode_ms:.2f}); "
        f"numbers_kept diff {diff.mean:+.3f} [{diff.ci_low:+.3f}, {diff.ci_high:+.3f}]"
    )
    write_results(
        "evals",
        {
            "documents": len(items),
            "mean_document_chars": chars,
            "rounds": args.rounds,
            "scoring_cpu_us_per_job": round(scoring, 1),
            "input_guardrails_cpu_us_per_job": round(guarding, 1),
            "scoring_over_guardrails": round(scoring / guarding, 3),
            "pairs": args.pairs,
            "report_cpu_ms": round(build_ms, 1),
            "decode_scores_cpu_ms": round(decode_ms, 1),
            "report_over_decode": round(build_ms / decode_ms, 3),
        },
    )


if __name__ == "__main__":
    main()

"""The evaluation report: per variant, its scores, cost, latency and failures, and for a shadow
variant the paired difference to the primary it shadowed, with a 95% confidence interval.

Pairs are what make the comparison fair: both variants answered the same inputs, so the
difference of each pair removes the inputs' own spread. The interval is the normal one,
mean(d) +- 1.96 * sd(d) / sqrt(n) (sample sd); with fewer than 2 pairs there is none.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

Z95 = 1.96
SUCCEEDED = "succeeded"


@dataclass(frozen=True)
class EvalRecord:
    """One eval_log row as the report needs it."""

    pair_id: str
    role: str  # primary | shadow
    variant: str
    status: str
    cost_usd: float | None
    latency_ms: float
    scores: dict[str, float]
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class Stat:
    mean: float
    p50: float


@dataclass(frozen=True)
class Diff:
    """Mean of (this variant - the primary) over the pairs where both succeeded."""

    n: int
    mean: float
    ci_low: float | None
    ci_high: float | None


@dataclass
class VariantReport:
    variant: str
    role: str
    n: int
    failed: int
    failure_rate: float
    cost_per_1k_usd: float | None  # None: some call was unpriced
    latency_p50_ms: float
    latency_p95_ms: float
    input_tokens: int
    output_tokens: int
    scores: dict[str, Stat] = field(default_factory=dict)
    vs_primary: dict[str, Diff] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default): p50 of [1, 2, 3, 4] is 2.5."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def paired_diff(diffs: Sequence[float]) -> Diff:
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Diff(len(diffs), mean, None, None)
    half = Z95 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Diff(len(diffs), mean, mean - half, mean + half)


def _pair_scores(shadow: EvalRecord, primary: EvalRecord) -> dict[str, float]:
    """The pair's own scores: the shadow's output length over the primary's."""
    ratio = shadow.scores.get("output_chars", 0.0) / max(primary.scores.get("output_chars", 0), 1)
    return {"length_ratio": ratio}


def build(records: Iterable[EvalRecord]) -> list[VariantReport]:
    """One report per variant: primaries first, then shadows, each by name."""
    records = list(records)
    primaries = {r.pair_id: r for r in records if r.role == "primary"}
    by_variant: dict[tuple[str, str], list[EvalRecord]] = {}
    for record in records:
        by_variant.setdefault((record.role, record.variant), []).append(record)
    reports = []
    for (role, variant), rows in sorted(
        by_variant.items(), key=lambda kv: (kv[0][0] != "primary", kv[0][1])
    ):
        ok = [r for r in rows if r.status == SUCCEEDED]
        costs = [r.cost_usd for r in rows]
        report = VariantReport(
            variant=variant,
            role=role,
            n=len(rows),
            failed=len(rows) - len(ok),
            failure_rate=(len(rows) - len(ok)) / len(rows),
            cost_per_1k_usd=None
            if any(c is None for c in costs)
            else 1000 * statistics.fmean(c or 0.0 for c in costs),
            latency_p50_ms=percentile([r.latency_ms for r in rows], 0.5),
            latency_p95_ms=percentile([r.latency_ms for r in rows], 0.95),
            input_tokens=sum(r.input_tokens for r in rows),
            output_tokens=sum(r.output_tokens for r in rows),
        )
        per_row = [dict(r.scores) for r in ok]
        pairs = []
        if role == "shadow":
            for r, scores in zip(ok, per_row, strict=True):
                primary = primaries.get(r.pair_id)
                if primary is not None and primary.status == SUCCEEDED:
                    scores.update(_pair_scores(r, primary))
                    pairs.append((scores, {**primary.scores, "length_ratio": 1.0}))
        names = sorted({name for scores in per_row for name in scores})
        for name in names:
            values = [s[name] for s in per_row if name in s]
            report.scores[name] = Stat(statistics.fmean(values), percentile(values, 0.5))
            diffs = [s[name] - p[name] for s, p in pairs if name in s and name in p]
            if diffs:
                report.vs_primary[name] = paired_diff(diffs)
        reports.append(report)
    return reports


# --- output formats ---------------------------------------------------------------------------


def as_json(reports: Sequence[VariantReport]) -> list[dict[str, Any]]:
    return [asdict(r) for r in reports]


def from_json(data: Sequence[dict[str, Any]]) -> list[VariantReport]:
    """`as_json`'s output (GET /v1/evals' `variants`) back into reports."""
    reports = []
    for item in data:
        fields = dict(item)
        scores = {k: Stat(**v) for k, v in fields.pop("scores").items()}
        diffs = {k: Diff(**v) for k, v in fields.pop("vs_primary").items()}
        reports.append(VariantReport(**fields, scores=scores, vs_primary=diffs))
    return reports


def flat_rows(reports: Sequence[VariantReport]) -> list[dict[str, Any]]:
    """One flat row per variant (CSV): every score's mean, p50 and difference to the primary."""
    names = sorted({name for r in reports for name in r.scores})
    rows = []
    for r in reports:
        row: dict[str, Any] = {
            "variant": r.variant, "role": r.role, "n": r.n, "failed": r.failed,
            "failure_rate": r.failure_rate, "cost_per_1k_usd": r.cost_per_1k_usd,
            "latency_p50_ms": r.latency_p50_ms, "latency_p95_ms": r.latency_p95_ms,
        }  # fmt: skip
        for name in names:
            stat, diff = r.scores.get(name), r.vs_primary.get(name)
            row[f"{name}_mean"] = stat.mean if stat else None
            row[f"{name}_p50"] = stat.p50 if stat else None
            row[f"{name}_diff"] = diff.mean if diff else None
            row[f"{name}_ci_low"] = diff.ci_low if diff else None
            row[f"{name}_ci_high"] = diff.ci_high if diff else None
        rows.append(row)
    return rows


def to_csv(reports: Sequence[VariantReport]) -> str:
    rows = flat_rows(reports)
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _num(v) for k, v in row.items()} for row in rows)
    return out.getvalue()


def _num(value: Any) -> Any:
    return "" if value is None else round(value, 6) if isinstance(value, float) else value


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def to_table(reports: Sequence[VariantReport]) -> str:
    """Two blocks for a terminal: the variants, then each score per variant with the paired
    difference to the primary and its interval."""
    if not reports:
        return "no evaluations yet"
    lines = [
        f"{'variant':<44} {'role':<7} {'n':>5} {'fail%':>6} {'$/1k jobs':>10} "
        f"{'p50 ms':>8} {'p95 ms':>8}"
    ]
    for r in reports:
        lines.append(
            f"{r.variant[:44]:<44} {r.role:<7} {r.n:>5} {100 * r.failure_rate:>6.1f} "
            f"{_fmt(r.cost_per_1k_usd, 4):>10} {r.latency_p50_ms:>8.0f} {r.latency_p95_ms:>8.0f}"
        )
    lines += [
        "",
        f"{'score':<20} {'variant':<44} {'mean':>9} {'p50':>9} {'vs primary (95% CI)':>32}",
    ]
    names = sorted({name for r in reports for name in r.scores})
    for name in names:
        for r in reports:
            stat = r.scores.get(name)
            if stat is None:
                continue
            diff = r.vs_primary.get(name)
            shown = ""
            if diff is not None:
                shown = f"{diff.mean:+.3f} [{_fmt(diff.ci_low)}, {_fmt(diff.ci_high)}] n={diff.n}"
            lines.append(
                f"{name:<20} {r.variant[:44]:<44} {stat.mean:>9.3f} {stat.p50:>9.3f} "
                f"{shown:>32}".rstrip()
            )
    return "\n".join(lines)


def to_json_text(reports: Sequence[VariantReport]) -> str:
    return json.dumps(as_json(reports), indent=2)

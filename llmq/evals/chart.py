"""The report as one PNG: each variant a point at (cost per 1,000 jobs, mean score), so a
variant as good and cheaper sits left of the primary at the same height. Needs matplotlib
(`pip install llmq[charts]`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from llmq.errors import UserError
from llmq.evals.report import VariantReport

DEFAULT_SCORE = "numbers_kept"


def write_chart(reports: Sequence[VariantReport], path: Path, score: str = DEFAULT_SCORE) -> int:
    """Draw `score` against cost per 1k jobs, one labelled point per variant (with its
    interval against the primary when it has one); returns how many variants were drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--chart needs matplotlib: pip install 'llmq[charts]'") from None
    drawn = [r for r in reports if score in r.scores and r.cost_per_1k_usd is not None]
    if not drawn:
        raise UserError(f"no variant has both a cost and the score {score!r} to chart")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        for r in drawn:
            x, y = r.cost_per_1k_usd or 0.0, r.scores[score].mean
            diff = r.vs_primary.get(score)
            marker = "o" if r.role == "primary" else "s"
            if diff is not None and diff.ci_low is not None and diff.ci_high is not None:
                # The paired interval, drawn around the variant's own mean.
                low, high = y - (diff.mean - diff.ci_low), y + (diff.ci_high - diff.mean)
                ax.errorbar([x], [y], yerr=[[y - low], [high - y]], fmt=marker, capsize=4)
            else:
                ax.plot([x], [y], marker)
            ax.annotate(f"{r.variant} (n={r.n})", (x, y), textcoords="offset points",
                        xytext=(6, 6), fontsize=8)  # fmt: skip
        ax.set_xlabel("cost per 1,000 jobs (USD)")
        ax.set_ylabel(f"mean {score}")
        ax.set_title(f"{score} vs cost per variant")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return len(drawn)

"""Usage rollups per template version (A/B)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text


def usage_by_template(
    engine: Engine, tenant_id: uuid.UUID, since: datetime | None = None
) -> list[dict[str, Any]]:
    """Jobs, outcomes, tokens and cost per template version (A/B comparisons). Chunk and reduce
    jobs are left out: their parent already carries their tokens and cost."""
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text(
                    "SELECT template, template_version, count(*) AS jobs, "
                    "count(*) FILTER (WHERE status = 'succeeded') AS succeeded, "
                    "count(*) FILTER (WHERE status IN ('failed', 'blocked')) AS failed, "
                    "coalesce(sum(input_tokens), 0) AS input_tokens, "
                    "coalesce(sum(output_tokens), 0) AS output_tokens, "
                    "coalesce(sum(cost_usd), 0) AS cost_usd FROM jobs "
                    "WHERE tenant_id = :t AND parent_id IS NULL "
                    "AND (CAST(:since AS timestamptz) IS NULL OR created_at >= :since) "
                    "GROUP BY template, template_version ORDER BY template, template_version"
                ),
                {"t": tenant_id, "since": since},
            ).mappings()
        ]

"""Compare a rollup table with an aggregate computed afresh over the raw rows.

Shared by the sink tests and the end-to-end fleet test: every rollup row must equal
the raw rows' aggregate for its (site, device, channel, name, unit, bucket), and no
group may be missing on either side.
"""

from __future__ import annotations

from typing import Any


async def rollup_mismatches(
    conn: Any, raw: str, rollup: str, seconds: int, site_expr: str = "site"
) -> tuple[int, list[dict[str, Any]]]:
    """(rollup rows, mismatching groups) for ``rollup`` against ``raw``."""
    sql = f"""
    WITH fresh AS (
      SELECT {site_expr} AS site, device, coalesce(channel, '') AS channel,
             coalesce(name, '') AS name, coalesce(unit, '') AS unit,
             to_timestamp(floor(extract(epoch FROM received_at) / $1) * $1) AS bucket,
             count(*) AS samples, count(value) AS n_values,
             count(*) FILTER (WHERE ok) AS n_ok,
             count(*) FILTER (WHERE error IS NOT NULL) AS n_errors,
             min(value) AS v_min, max(value) AS v_max, coalesce(sum(value), 0) AS v_sum
      FROM {raw} GROUP BY 1, 2, 3, 4, 5, 6)
    SELECT f.*, r.samples AS r_samples, r.n_values AS r_n_values, r.n_ok AS r_n_ok,
           r.n_errors AS r_n_errors, r.v_min AS r_v_min, r.v_max AS r_v_max,
           r.v_sum AS r_v_sum, r.bucket AS r_bucket
    FROM fresh f FULL OUTER JOIN {rollup} r
      USING (site, device, channel, name, unit, bucket)
    WHERE f.samples IS DISTINCT FROM r.samples OR f.n_values IS DISTINCT FROM r.n_values
       OR f.n_ok IS DISTINCT FROM r.n_ok OR f.n_errors IS DISTINCT FROM r.n_errors
       OR f.v_min IS DISTINCT FROM r.v_min OR f.v_max IS DISTINCT FROM r.v_max
       OR r.v_sum IS NULL OR f.v_sum IS NULL
       OR abs(f.v_sum - r.v_sum) > 1e-9 * greatest(1, abs(f.v_sum))
    """
    bad = [dict(row) for row in await conn.fetch(sql, seconds)]
    total = await conn.fetchval(f"SELECT count(*) FROM {rollup}")
    return int(total), bad

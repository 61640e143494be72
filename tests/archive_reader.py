"""Reading the archive back the way the README tells users to: DuckDB over the hive-partitioned files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb


def query(archive: Path, table: str, sql: str) -> list[tuple[Any, ...]]:
    """Run `sql` with `t` bound to read_parquet over one archive table; [] when it has no file yet."""
    files = sorted((archive / table).glob("**/*.parquet"))
    if not files:
        return []
    source = f"read_parquet('{archive / table}/**/*.parquet', hive_partitioning = true)"
    return duckdb.sql(sql.replace("FROM t", f"FROM {source}")).fetchall()


def archived_trace_ids(data_dir: Path) -> set[str]:
    """Every trace id in a data directory's archive `traces` table."""
    return {row[0] for row in query(data_dir / "archive", "traces", "SELECT trace_id FROM t")}

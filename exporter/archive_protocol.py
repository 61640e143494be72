"""The archive writer's wire protocol, spoken by both of its sides: ParquetArchive in the sidecar
(exporter/archive.py) and the writer process (exporter/archive_worker.py). Frames travel over the
channel tracejudge/child_process.py provides.

A frame is one kind byte and its payload:

    parent -> writer   S <ExportTraceServiceRequest bytes>   spans, as received: rows are built in the writer
                       L <ExportLogsServiceRequest bytes>    log records, likewise
                       T | A | K <pickled list of row dicts>  traces, assessments, skipped: rows built by
                                                             tracejudge (rows.*_SCHEMA), cheap to pickle
                       F                                     flush: close the open files, then acknowledge
                       C                                     close: the same, then exit
    writer -> parent   k                                     the acknowledgement of one F or C
                       w                                     waiting: the object store cannot be reached, so
                                                             no F is acknowledged until it can (a stop need
                                                             not wait for one: the log keeps the rows)
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from typing import Any

SPANS, LOGS, TRACES, ASSESSMENTS, SKIPPED, FLUSH, CLOSE = b"S", b"L", b"T", b"A", b"K", b"F", b"C"
ACK, STORE_DOWN = b"k", b"w"
TABLES: dict[bytes, str] = {SPANS: "spans", LOGS: "logs", TRACES: "traces", ASSESSMENTS: "assessments",
                            SKIPPED: "skipped"}  # fmt: skip
ROW_KINDS = frozenset({TRACES, ASSESSMENTS, SKIPPED})
_KIND_OF_TABLE = {table: kind for kind, table in TABLES.items()}


def rows_frame(table: str, rows: Sequence[Mapping[str, Any]]) -> bytes:
    """A frame of rows for `table` (traces, assessments or skipped). Built wherever the rows are: the
    scoring worker builds its assessment frames itself, and the sidecar only relays them."""
    kind = _KIND_OF_TABLE[table]
    if kind not in ROW_KINDS:
        raise ValueError(f"{table} rows are built by the writer, from OTLP")
    return kind + pickle.dumps(list(rows), protocol=5)


def table_of(frame: bytes) -> str:
    return TABLES[frame[:1]]


def decode_rows(payload: bytes) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pickle.loads(payload)
    return rows

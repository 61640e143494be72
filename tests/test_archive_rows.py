"""The archive's row format: every AnyValue shape survives as JSON that DuckDB can query."""

from __future__ import annotations

import json
import math

import duckdb
import pyarrow as pa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tracejudge.exporter.rows import spans_batch


def test_every_attribute_shape_round_trips_through_json_and_duckdb():
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "svc"
    span = resource_spans.scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="chat", kind=3,
        start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_000_250_000_000,
    )  # fmt: skip
    values = {
        "s": AnyValue(string_value='héllo "quoted"'),
        "i": AnyValue(int_value=-(2**63)),
        "d": AnyValue(double_value=math.nan),
        "b": AnyValue(bool_value=True),
        "raw": AnyValue(bytes_value=b"\x00\xff"),
    }
    for key, value in values.items():
        span.attributes.add(key=key).value.CopyFrom(value)
    nested = span.attributes.add(key="messages").value
    message = nested.array_value.values.add().kvlist_value
    message.values.add(key="role").value.string_value = "user"
    message.values.add(key="tokens").value.int_value = 3
    span.events.add(name="exception", time_unix_nano=5).attributes.add(key="exception.type").value.string_value = "E"

    batch = spans_batch(request, received_at=1_700_000_001_000_000_000)
    row = batch.to_pylist()[0]
    assert json.loads(row["attributes"]) == {
        "s": 'héllo "quoted"', "i": -(2**63), "d": None, "b": True, "raw": "AP8=",
        "messages": [{"role": "user", "tokens": 3}],
    }  # fmt: skip
    assert (row["trace_id"], row["kind"], row["service_name"], row["duration_ms"]) == (
        "01" * 16,
        "CLIENT",
        "svc",
        250.0,
    )
    archived = pa.Table.from_batches([batch])  # noqa: F841 - read by DuckDB below
    result = duckdb.sql("""SELECT attributes->>'$.messages[0].role', CAST(attributes->'$.i' AS BIGINT),
                                  events->>'$[0].attributes."exception.type"' FROM archived""").fetchall()
    assert result == [("user", -(2**63), "E")]

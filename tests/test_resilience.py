"""Downstream outages, restarts, SIGTERM and SIGKILL with traffic in flight: nothing accepted is lost."""

from __future__ import annotations

import os
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tracejudge.synthetic import genai_request
from tracejudge.testing import child_processes, wait_until

from archive_reader import query
from otlp_peers import TRACE_METHOD, GrpcSink, post


def small_queue_config(url: str) -> dict:
    return {
        "forward": [
            {
                "url": url,
                "workers": 2,
                "retry": {"initial_interval": "50ms", "max_interval": "200ms"},
            }
        ]
    }


def test_downstream_outage_and_recovery_lose_nothing(sidecar_factory):
    sink = GrpcSink().start()
    sidecar = sidecar_factory([], small_queue_config(sink.url))
    sink.failing = True
    sent = [genai_request(20).SerializeToString() for _ in range(30)]
    for payload in sent:
        assert post(f"{sidecar.http_url}/v1/traces", payload)[0] == 200
    # Each condition is waited on, not read the instant another holds: the retry counter is exported
    # after the failed send that bumps it, so on a busy machine it can lag the log's backlog.
    assert wait_until(lambda: sidecar.metric("tracejudge_forwarder_queue_disk_bytes") > 0)
    assert wait_until(lambda: sidecar.metric("tracejudge_forwarder_retries_total") > 0)
    sink.stop()
    sink.failing = False
    sink.start()
    assert wait_until(lambda: len(sink.received.payloads["traces"]) == len(sent), timeout=30)
    assert sorted(sink.received.payloads["traces"]) == sorted(sent)
    assert sidecar.metric("tracejudge_forwarder_dropped_items_total") == 0
    sink.stop()


def test_queue_survives_restart_and_is_resent(sidecar_factory):
    sink = GrpcSink()
    config = small_queue_config(sink.url)
    first = sidecar_factory([], config, name="restart")
    sent = [genai_request(10).SerializeToString() for _ in range(20)]
    for payload in sent:
        assert post(f"{first.http_url}/v1/traces", payload)[0] == 200
    assert first.stop() == 0
    assert "kept on disk for the next start" in first.log()

    sink.start()
    second = sidecar_factory([], config, name="restart")
    assert wait_until(lambda: len(sink.received.payloads["traces"]) == len(sent), timeout=30)
    assert sorted(sink.received.payloads["traces"]) == sorted(sent)
    second.stop()
    sink.stop()


def post_with_headers(url: str, body: bytes) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


def test_a_full_log_refuses_with_retryable_statuses_and_keeps_what_it_accepted(sidecar_factory):
    sink = GrpcSink()  # down: the forward cursor holds every record
    config = {**small_queue_config(sink.url), "wal": {"max_size": "400KiB"}}
    sidecar = sidecar_factory([], config)
    accepted: list[bytes] = []
    refused: list[tuple[int, str | None]] = []
    for _ in range(40):
        payload = genai_request(20).SerializeToString()
        status, headers = post_with_headers(f"{sidecar.http_url}/v1/traces", payload)
        if status == 200:
            accepted.append(payload)
        else:
            refused.append((status, headers.get("Retry-After")))
    assert accepted and refused
    assert {status for status, _ in refused} == {503} and all(after for _, after in refused)
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        try:
            channel.unary_unary(TRACE_METHOD)(genai_request(20).SerializeToString(), timeout=5)
            raise AssertionError("a full log accepted a gRPC export")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
    sink.start()
    assert wait_until(lambda: len(sink.received.payloads["traces"]) == len(accepted), timeout=30)
    assert sorted(sink.received.payloads["traces"]) == sorted(accepted)
    assert sidecar.metric("tracejudge_wal_dropped_items_total") == 0
    assert post(f"{sidecar.http_url}/v1/traces", genai_request(1).SerializeToString())[0] == 200  # room again
    sink.stop()


def test_a_full_log_set_to_drop_oldest_counts_and_logs_the_drops(sidecar_factory):
    sink = GrpcSink()
    config = {**small_queue_config(sink.url), "wal": {"max_size": "400KiB", "when_full": "drop_oldest"}}
    sidecar = sidecar_factory([], config)
    for _ in range(40):
        assert post(f"{sidecar.http_url}/v1/traces", genai_request(20).SerializeToString())[0] == 200
    assert wait_until(lambda: sidecar.metric("tracejudge_wal_dropped_items_total") > 0)
    assert "dropped its oldest segment" in sidecar.log()


def test_non_retryable_rejection_is_dropped_not_retried(sidecar_factory, http_sink):
    sidecar = sidecar_factory([f"{http_sink.url}/wrong-prefix"])
    http_sink.status = 400
    post(f"{sidecar.http_url}/v1/traces", genai_request(1).SerializeToString())
    assert wait_until(lambda: sidecar.metric("tracejudge_forwarder_dropped_items_total", reason="rejected") == 5)
    assert len(http_sink.encodings) == 1
    assert sidecar.metric("tracejudge_forwarder_retries_total") == 0
    assert "HTTP 400" in sidecar.log()


def test_late_spans_are_forwarded_and_archived_but_do_not_start_a_second_trace(sidecar_factory, grpc_sink):
    sidecar = sidecar_factory([grpc_sink.url], {"assembler": {"trace_idle": "200ms"}})
    request = genai_request(1)
    spans = request.resource_spans[0].scope_spans[0].spans
    late = spans.pop()
    post(f"{sidecar.http_url}/v1/traces", request.SerializeToString())
    assert wait_until(lambda: sidecar.metric("tracejudge_assembler_completed_traces_total", reason="root_idle") == 1)
    del spans[:]
    spans.append(late)
    post(f"{sidecar.http_url}/v1/traces", request.SerializeToString())
    assert wait_until(lambda: sidecar.metric("tracejudge_assembler_late_spans_total") == 1)
    assert wait_until(lambda: len(grpc_sink.received.spans()) == 5)
    sidecar.stop()
    archive = sidecar.data_dir / "archive"
    assert query(archive, "spans", "SELECT count(*) FROM t") == [(5,)]
    assert query(archive, "traces", "SELECT span_count, completion_reason FROM t") == [(4, "root_idle")]


def test_memory_cap_forces_oldest_traces_out_flagged_incomplete(sidecar_factory, grpc_sink):
    config = {"assembler": {"max_buffered_bytes": "64KiB", "trace_idle": "60s", "trace_timeout": "60s"}}
    sidecar = sidecar_factory([grpc_sink.url], config)
    for _ in range(10):
        request = genai_request(10)
        spans = request.resource_spans[0].scope_spans[0].spans
        rootless = [span for span in spans if span.parent_span_id]
        del spans[:]
        spans.extend(rootless)
        post(f"{sidecar.http_url}/v1/traces", request.SerializeToString())
    assert wait_until(lambda: sidecar.metric("tracejudge_assembler_completed_traces_total", reason="memory_cap") > 0)
    assert sidecar.metric("tracejudge_assembler_buffered_bytes") <= 64 * 1024
    buffered = sidecar.metric("tracejudge_assembler_buffered_traces")
    sidecar.stop()
    rows = query(
        sidecar.data_dir / "archive",
        "traces",
        "SELECT completion_reason, complete, count(*) FROM t GROUP BY ALL ORDER BY 1",
    )
    evicted = dict(((reason, complete), n) for reason, complete, n in rows)
    assert evicted[("memory_cap", False)] == 100 - buffered
    assert evicted[("shutdown", False)] == buffered


def test_sigterm_with_traffic_in_flight_loses_nothing_accepted(sidecar_factory, grpc_sink):
    sidecar = sidecar_factory([grpc_sink.url], {"assembler": {"trace_idle": "30s"}})
    accepted: list[bytes] = []
    stop = threading.Event()

    def send() -> None:
        with grpc.insecure_channel(sidecar.grpc_target) as channel:
            export = channel.unary_unary(TRACE_METHOD)
            while not stop.is_set():
                payload = genai_request(10).SerializeToString()
                try:
                    export(payload, timeout=5)
                except grpc.RpcError:
                    return
                accepted.append(payload)

    senders = [threading.Thread(target=send) for _ in range(3)]
    for sender in senders:
        sender.start()
    assert wait_until(lambda: len(accepted) >= 30)
    assert sidecar.stop() == 0
    stop.set()
    for sender in senders:
        sender.join()

    assert sorted(grpc_sink.received.payloads["traces"]) == sorted(accepted)
    archive = sidecar.data_dir / "archive"
    assert query(archive, "spans", "SELECT count(*) FROM t") == [(50 * len(accepted),)]
    assert query(archive, "traces", "SELECT count(*), bool_and(complete) FROM t") == [(10 * len(accepted), True)]
    assert "tracejudge stopped" in sidecar.log()


def test_health_readiness_and_metrics_endpoints(sidecar_factory, grpc_sink):
    sidecar = sidecar_factory([grpc_sink.url])
    for path, expected in (("/healthz", b"ok\n"), ("/readyz", b"ready\n")):
        with urllib.request.urlopen(f"{sidecar.admin_url}{path}", timeout=5) as response:
            assert (response.status, response.read()) == (200, expected)
    post(f"{sidecar.http_url}/v1/traces", genai_request(2).SerializeToString())
    assert wait_until(lambda: sidecar.metric("tracejudge_forwarder_sent_items_total") == 10)
    names = sidecar.metrics().names
    for name in (
        "tracejudge_receiver_accepted_items_total",
        "tracejudge_forwarder_queue_items",
        "tracejudge_assembler_buffered_traces",
        "tracejudge_assembler_buffered_bytes",
        "tracejudge_archive_queue_bytes",
    ):
        assert name in names


def fully_dead(pid: int) -> bool:
    """Dead with every thread gone: only then are its files, the pipe's read end among them, closed.

    A killed multi-threaded process shows as a zombie while its other threads are still exiting."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "State:\tZ" in status and "Threads:\t1\n" in status


def test_archive_writer_crash_is_restarted_and_archiving_continues(sidecar_factory, grpc_sink):
    sidecar = sidecar_factory([grpc_sink.url])
    [writer] = child_processes(sidecar.process.pid, "tracejudge.exporter.archive_worker")
    os.kill(writer, signal.SIGKILL)
    assert wait_until(lambda: fully_dead(writer))
    payloads = [genai_request(2).SerializeToString() for _ in range(3)]
    for payload in payloads:
        assert post(f"{sidecar.http_url}/v1/traces", payload)[0] == 200
    assert wait_until(lambda: sidecar.metric("tracejudge_archive_worker_restarts_total") == 1)
    assert wait_until(lambda: len(grpc_sink.received.payloads["traces"]) == 3)
    sidecar.stop()
    assert query(sidecar.data_dir / "archive", "spans", "SELECT count(*) FROM t") == [(30,)]
    assert "archive writer process is gone" in sidecar.log()


def test_self_metrics_are_pushed_over_otlp(sidecar_factory, grpc_sink):
    config = {"telemetry": {"otlp_endpoint": grpc_sink.url, "otlp_interval": "300ms"}}
    sidecar = sidecar_factory([], config)
    post(f"{sidecar.http_url}/v1/traces", genai_request(1).SerializeToString())

    def pushed_names() -> set[str]:
        return {
            metric.name
            for request in grpc_sink.received.requests("metrics")
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        }

    assert wait_until(lambda: "tracejudge.receiver.accepted_items" in pushed_names())
    assert "tracejudge.assembler.buffered_traces" in pushed_names()


def test_ctrl_c_to_the_process_group_still_archives_everything(sidecar_factory, grpc_sink):
    sidecar = sidecar_factory([grpc_sink.url])
    payloads = [genai_request(10).SerializeToString() for _ in range(5)]
    for payload in payloads:
        assert post(f"{sidecar.http_url}/v1/traces", payload)[0] == 200
    assert sidecar.interrupt_group(signal.SIGINT) == 0
    assert "BrokenPipe" not in sidecar.log() and "Traceback" not in sidecar.log()
    assert sorted(grpc_sink.received.payloads["traces"]) == sorted(payloads)
    assert query(sidecar.data_dir / "archive", "spans", "SELECT count(*) FROM t") == [(250,)]
    assert query(sidecar.data_dir / "archive", "traces", "SELECT count(*) FROM t") == [(50,)]


@pytest.mark.parametrize("downstream", ["up", "down"])
def test_sigkill_under_load_loses_nothing_acknowledged(sidecar_factory, downstream):
    """SIGKILL of the whole process group while three clients export; restart on the same data dir
    (downstream still down, then back): every acknowledged span reaches the sink and the archive."""
    sink = GrpcSink()
    if downstream == "up":
        sink.start()
    config = {**small_queue_config(sink.url), "assembler": {"trace_idle": "200ms"}}
    first = sidecar_factory([], config, name="killed")
    accepted: list[bytes] = []
    stop = threading.Event()

    def send() -> None:
        with grpc.insecure_channel(first.grpc_target) as channel:
            export = channel.unary_unary(TRACE_METHOD)
            while not stop.is_set():
                payload = genai_request(10).SerializeToString()
                try:
                    export(payload, timeout=5)
                except grpc.RpcError:
                    return
                accepted.append(payload)

    senders = [threading.Thread(target=send) for _ in range(3)]
    for sender in senders:
        sender.start()
    assert wait_until(lambda: len(accepted) >= 60)
    first.kill()
    stop.set()
    for sender in senders:
        sender.join()

    second = sidecar_factory([], config, name="killed")
    if downstream == "down":
        assert wait_until(lambda: second.metric("tracejudge_forwarder_retries_total") > 0)
        sink.start()
    assert wait_until(lambda: set(accepted) <= set(sink.received.payloads["traces"]), timeout=60)
    assert "write-ahead log" in second.log()  # it replayed
    assert second.stop() == 0
    sink.stop()

    span_ids = {
        span.span_id.hex()
        for payload in accepted
        for rs in ExportTraceServiceRequest.FromString(payload).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    }
    archived = {row[0] for row in query(second.data_dir / "archive", "spans", "SELECT DISTINCT span_id FROM t")}
    assert span_ids - archived == set()
    assert len(list((second.data_dir / "wal").glob("*.wal"))) <= 1  # every cursor passed the rest


def test_traces_being_scored_at_a_sigkill_are_recorded_as_skipped_restart(sidecar_factory, grpc_sink):
    """Decided traces handed to a judge that has not answered are past the assembler's cursor; a SIGKILL
    must not make them vanish: the next start records each as skipped (`restart`), counted and archived,
    and scores what arrives after it as usual."""
    from mock_openai import MockOpenAI, faults

    with MockOpenAI() as judge:
        judge.always(faults.hang(60.0))  # no verdict before the kill
        config = {
            "assembler": {"trace_idle": "200ms"},
            "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TJ_TEST_NO_KEY", "timeout": "60s"}},
            "scorers": [{"name": "safety", "builtin": "Safety", "sample_rate": 1.0}],
        }
        first = sidecar_factory([grpc_sink.url], config, name="scoring-killed")
        request = genai_request(4)
        trace_ids = {s.trace_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
        assert post(f"{first.http_url}/v1/traces", request.SerializeToString())[0] == 200
        assert wait_until(lambda: first.metric("tracejudge_scoring_backlog") == 4)
        assert wait_until(lambda: len(judge.chat_requests()) >= 4)  # the judge holds every call
        # Decided, and the assembler's cursor on disk past their record: a restart does not rebuild them
        # (if it did, they would be sampled and scored again: ScoringEngine.end_recovery).
        position = first.data_dir / "wal" / "cursors" / "assembler"
        assert wait_until(lambda: position.exists() and int(position.read_text() or 0) >= 1)
        first.kill()

        judge.always(None)
        second = sidecar_factory([grpc_sink.url], config, name="scoring-killed")
        assert wait_until(lambda: second.metric("tracejudge_scoring_skipped_total", reason="restart") == 4)
        assert "4 traces were being scored when tracejudge last stopped" in second.log()
        later = genai_request(1)
        assert post(f"{second.http_url}/v1/traces", later.SerializeToString())[0] == 200
        assert wait_until(lambda: second.metric("tracejudge_scoring_scored_total", scorer="safety") == 1), (
            second.metric("tracejudge_scoring_scored_total", scorer="safety"),
            second.log_tail(),
        )
        assert second.stop() == 0

    rows = query(first.data_dir / "archive", "skipped", "SELECT trace_id, scorers, reason FROM t")
    assert {row[0] for row in rows if row[2] == "restart"} == trace_ids
    assert all(list(row[1]) == ["safety"] for row in rows if row[2] == "restart")
    third = sidecar_factory([grpc_sink.url], config, name="scoring-killed")  # a clean stop leaves nothing open
    assert third.metric("tracejudge_scoring_skipped_total", reason="restart") == 0


def test_rows_tracejudge_writes_itself_survive_a_sigkill(sidecar_factory, grpc_sink):
    """Trace summaries and assessments are archive rows tracejudge builds, not spans an app sent; they go
    through the write-ahead log too, so a SIGKILL before their Parquet files closed loses none of them."""
    config = {
        "assembler": {"trace_idle": "200ms"},
        "scorers": [{"name": "no_error", "builtin": "NoError", "sample_rate": 1.0}],
        "archive": {"roll_interval": "10m"},  # nothing closes before the kill
    }
    first = sidecar_factory([grpc_sink.url], config, name="rows-killed")
    request = genai_request(5)
    trace_ids = {s.trace_id.hex() for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
    assert post(f"{first.http_url}/v1/traces", request.SerializeToString())[0] == 200
    verdicts = lambda: [s for s in grpc_sink.received.spans() if s.name == "evaluation no_error"]  # noqa: E731
    assert wait_until(lambda: len(verdicts()) == 5)
    assert wait_until(lambda: first.metric("tracejudge_archive_enqueued_items_total", table="assessments") == 5)
    # An OOM kill of the whole container: the archive writer (its own process group) dies with the rest.
    [writer] = child_processes(first.process.pid, "tracejudge.exporter.archive_worker")
    os.kill(writer, signal.SIGKILL)
    first.kill()
    assert not list((first.data_dir / "archive").glob("**/*.parquet"))  # the kill took the open files

    second = sidecar_factory([grpc_sink.url], config, name="rows-killed")
    assert second.stop() == 0
    archive = first.data_dir / "archive"
    assessed = query(archive, "assessments", "SELECT trace_id, name FROM t")
    assert {row[0] for row in assessed} == trace_ids and {row[1] for row in assessed} == {"no_error"}
    assert {row[0] for row in query(archive, "traces", "SELECT trace_id FROM t")} == trace_ids
    assert len({row[0] for row in query(archive, "spans", "SELECT span_id FROM t")}) == 25

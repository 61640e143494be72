"""The scoring worker process: `python -m tracejudge.scoring_worker --fd N` (scoring/worker.py starts it).

It wires the scoring loop (scoring/loop.py) to an AssessmentEmitter (exporter/emitter.py). In the
sidecar the emitter's outputs leave over the channel already encoded: OTLP batches for the
forwarder's queue (so verdicts are retried and spilled like app data) and `assessments` rows frames
for the archive. The emitter records the assessment metrics here, in the worker, where each verdict
is emitted; the sidecar's /metrics asks for them (METRICS) and serves them with its own. Started by
an app's own process instead (tracejudge/inprocess.py), it exports its verdicts and metrics to an OTLP
endpoint itself.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk._logs.export import LogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry, generate_latest

from tracejudge import __version__
from tracejudge.child_process import ParentChannel
from tracejudge.event_loop import new_event_loop
from tracejudge.exporter.archive_protocol import rows_frame
from tracejudge.exporter.emitter import AssessmentEmitter
from tracejudge.exporter.queued_exporters import QueuedLogExporter, QueuedSpanExporter
from tracejudge.logs import configure_logging
from tracejudge.model import Signal
from tracejudge.otlp_exporters import metric_exporter, span_and_log_exporters
from tracejudge.scoring.loop import ScoringLoop
from tracejudge.scoring.worker_protocol import (
    ARCHIVE,
    FORWARD,
    INIT,
    METRICS,
    METRICS_TEXT,
    RESTART_EXIT_CODE,
    Message,
    WorkerSettings,
    decode,
    encode,
)

log = logging.getLogger("tracejudge.scoring.worker")


class SidecarChannel:
    """The worker's end of the channel, for the loop, the emitter's exporters and its row sink. A METRICS
    request is answered here, on the reading thread: the loop knows nothing of metrics."""

    def __init__(self, parent: ParentChannel, registry: CollectorRegistry) -> None:
        self._parent = parent
        self._registry = registry

    def send(self, message: Message) -> bool:
        return self._parent.send(encode(message))

    def recv(self) -> Message | None:
        while (frame := self._parent.recv()) is not None:
            message = decode(frame)
            if message[0] != METRICS:
                return message
            self.send((METRICS_TEXT, message[1], generate_latest(self._registry)))
        return None

    def forward(self, signal: Signal, payload: bytes, items: int) -> None:
        if not self.send((FORWARD, signal, payload, items)):
            log.error("the sidecar is gone; %d verdict %s not forwarded", items, signal.value)

    def write_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not self.send((ARCHIVE, rows_frame(table, rows), len(rows))):
            log.error("the sidecar is gone; %d %s rows not archived", len(rows), table)


def worker_metrics(settings: WorkerSettings) -> tuple[MeterProvider, CollectorRegistry]:
    """The worker's own meter: read by the sidecar's /metrics (no target_info: the sidecar's own says who
    it is), and pushed by OTLP beside the sidecar's when telemetry.otlp_endpoint is set."""
    registry = CollectorRegistry()
    readers: list[MetricReader] = [PrometheusMetricReader(disable_target_info=True, registry=registry)]
    if settings.push_metrics:
        interval_ms = settings.metrics_interval_s * 1000
        readers.append(PeriodicExportingMetricReader(metric_exporter(settings.metrics_endpoint), interval_ms))
    resource = Resource.create({"service.name": "tracejudge", "service.version": __version__})
    return MeterProvider(metric_readers=readers, resource=resource), registry


def build_emitter(settings: WorkerSettings, channel: SidecarChannel, provider: MeterProvider) -> AssessmentEmitter:
    exporters: tuple[SpanExporter, LogRecordExporter] | None = None
    if settings.verdicts == "relay":
        exporters = (QueuedSpanExporter(channel.forward), QueuedLogExporter(channel.forward))
    elif settings.verdicts == "direct":
        exporters = span_and_log_exporters(settings.otlp_endpoint)
    return AssessmentEmitter(
        exporters,
        provider.get_meter("tracejudge", __version__),
        channel if settings.archive else None,
        export_interval_s=settings.emit_interval_s,
    )


def lower_priority(increment: int) -> None:
    """Nice the process, and its autogroup where the kernel has them: the worker runs in a session of its
    own, and with autogroups (Linux's default for desktops and many VMs) a nice value only ranks a
    process within its session's group, while groups share the CPU equally."""
    try:
        os.nice(increment)
    except OSError as exc:
        log.warning("could not lower the scoring worker's priority: %s", exc)
    autogroup = Path("/proc/self/autogroup")
    if increment and autogroup.exists():
        try:
            autogroup.write_text(str(increment))
        except OSError as exc:
            log.debug("could not lower the scoring worker's autogroup priority: %s", exc)


def connect_to_sidecar(argv: list[str] | None, description: str | None, first_kind: str,
                       nice: int) -> tuple[ParentChannel, Any]:  # fmt: skip
    """A sidecar's worker process starting: its arguments (--fd, --nice, --log-level), logging, priority, the
    channel, and the body of the frame the sidecar sends first (`first_kind`), whose `sys_path` (the
    sidecar's) is added to this process's so code scorers import from where the sidecar could."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--fd", type=int, required=True, help="the channel to the sidecar")
    parser.add_argument("--nice", type=int, default=nice, help="CPU priority increment")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    os.set_inheritable(args.fd, False)
    configure_logging(args.log_level)
    lower_priority(args.nice)
    parent = ParentChannel(args.fd)
    first = parent.recv()
    if first is None or decode(first)[0] != first_kind:
        raise SystemExit(f"expected {first_kind!r} first from the sidecar")
    body = decode(first)[1]
    sys.path.extend(p for p in body.sys_path if p not in sys.path)
    return parent, body


def main(argv: list[str] | None = None) -> None:
    parent, settings = connect_to_sidecar(argv, __doc__, INIT, nice=10)
    assert isinstance(settings, WorkerSettings)
    provider, registry = worker_metrics(settings)
    channel = SidecarChannel(parent, registry)
    gc.collect()
    gc.freeze()  # start-up's objects live as long as the process: collections need not walk them
    gc.set_threshold(10_000, 20, 20)  # the sidecar's setting (sidecar.tune_garbage_collector), same reason
    loop = new_event_loop()
    code = 1
    try:
        scoring = ScoringLoop(settings, channel, build_emitter(settings, channel, provider))
        code = RESTART_EXIT_CODE if loop.run_until_complete(scoring.run()) else 0
    except BaseException:
        log.exception("the scoring worker failed")
    finally:
        loop.close()
        provider.shutdown()
    # A code scorer thread that never returned would keep a normal interpreter exit waiting for it
    # forever (the sidecar would then wait for this process forever), so leave without joining threads.
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()

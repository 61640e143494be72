"""The scoring worker process's entry point: `python -m tracejudge.scoring_worker --fd N`.

It wires scoring/worker.py's ScoringLoop to an AssessmentEmitter whose outputs are relayed to the
sidecar over the socket it was given: encoded OTLP batches for the forwarder's queue (so verdicts
are retried and spilled like app data), and `assessments` rows with each progress report. The
sidecar counts its metrics from those rows, so /metrics stays one endpoint, and archives them.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tracejudge.aio import new_event_loop
from tracejudge.exporter.assessment_emitter import AssessmentEmitter
from tracejudge.exporter.queued_exporters import QueuedLogExporter, QueuedSpanExporter
from tracejudge.logs import configure_logging
from tracejudge.model import Signal
from tracejudge.scoring.worker import FORWARD, INIT, RESTART_EXIT_CODE, RowBuffer, ScoringLoop, WorkerSettings

log = logging.getLogger("tracejudge.scoring.worker")


class SidecarChannel:
    """The worker's end of the socket. The event loop and the SDK's export threads all send on it."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> bool:
        with self._lock:
            try:
                self._conn.send(message)
            except OSError:
                return False
        return True

    def recv(self) -> tuple[Any, ...]:
        message: tuple[Any, ...] = self._conn.recv()
        return message

    def forward(self, signal: Signal, payload: bytes, items: int) -> None:
        if not self.send((FORWARD, signal, payload, items)):
            log.error("the sidecar is gone; %d verdict %s not forwarded", items, signal.value)


def build_emitter(settings: WorkerSettings, channel: SidecarChannel, rows: RowBuffer) -> AssessmentEmitter:
    exporters = (QueuedSpanExporter(channel.forward), QueuedLogExporter(channel.forward))
    return AssessmentEmitter(
        None,
        None,
        archive=rows,
        export_interval_s=settings.emit_interval_s,
        exporters=exporters if settings.emit_otlp else None,
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="the socket shared with the sidecar")
    parser.add_argument("--nice", type=int, default=10, help="CPU priority increment")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    os.set_inheritable(args.fd, False)
    configure_logging(args.log_level)
    lower_priority(args.nice)
    channel = SidecarChannel(Connection(args.fd))
    kind, settings = channel.recv()
    if kind != INIT:
        raise SystemExit(f"expected {INIT!r} first, got {kind!r}")
    sys.path.extend(p for p in settings.sys_path if p not in sys.path)
    gc.collect()
    gc.freeze()  # start-up's objects live as long as the process: collections need not walk them
    gc.set_threshold(10_000, 20, 20)  # the sidecar's setting (pipeline.tune_garbage_collector), same reason
    loop = new_event_loop()
    code = 1
    try:
        rows = RowBuffer()
        scoring = ScoringLoop(settings, channel, build_emitter(settings, channel, rows), rows)
        code = RESTART_EXIT_CODE if loop.run_until_complete(scoring.run()) else 0
    except BaseException:
        log.exception("the scoring worker failed")
    finally:
        loop.close()
    # A code scorer thread that never returned would keep a normal interpreter exit waiting for it
    # forever (the sidecar would then wait for this process forever), so leave without joining threads.
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    main()

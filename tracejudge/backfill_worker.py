"""The process a sidecar runs one backfill job in: `python -m tracejudge.backfill_worker --fd N`.

It is told its job by the sidecar (tracejudge/backfill_jobs.py, ORDER first), runs it with the offline
backfill's code (tracejudge/backfill.py) over the sidecar's archive and registry as they are, and reports
back on the same channel: the job's record as it progresses, and the verdicts as encoded OTLP, which the
sidecar logs and forwards like live ones. CANCEL ends the job; PAUSE stops it where it is, resumable (the
sidecar is stopping). A dead parent is a PAUSE too.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

from tracejudge.backfill import Backfill
from tracejudge.backfill_jobs import CANCEL, JOB, ORDER, PAUSE, BackfillJob, BackfillOrder
from tracejudge.child_process import ParentChannel
from tracejudge.config_file import Config
from tracejudge.exporter.queued_exporters import QueuedLogExporter, QueuedSpanExporter, Submit
from tracejudge.model import Signal
from tracejudge.scoring.config import ScoringConfig
from tracejudge.scoring.worker_protocol import FORWARD, decode, encode
from tracejudge.scoring_worker import connect_to_sidecar

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parent, order = connect_to_sidecar(argv, __doc__, ORDER, nice=15)
    assert isinstance(order, BackfillOrder)
    raise SystemExit(run(order, parent))


def run(order: BackfillOrder, parent: ParentChannel) -> int:
    def tell(job: BackfillJob) -> None:
        parent.send(encode((JOB, asdict(job))))

    def forward(signal: Signal, payload: bytes, items: int) -> None:
        parent.send(encode((FORWARD, signal, payload, items)))

    try:
        return _run(order, tell, forward, parent)
    except Exception as exc:  # e.g. a scorer that cannot run here: the job fails, with why, and is not retried
        tell(replace(order.job, status="failed", error=f"{type(exc).__name__}: {exc}", finished_at=time.time()))
        raise


def _run(order: BackfillOrder, tell: Callable[[BackfillJob], None], forward: Submit, parent: ParentChannel) -> int:
    scoring = ScoringConfig(code_workers=order.code_workers, code_timeout=order.code_timeout_s)
    config = Config(data_dir=Path(order.data_dir), archive=order.archive, judges=order.judges,
                    judge_budget=order.budget, scorers=order.specs, scoring=scoring)  # fmt: skip
    backfill = Backfill.of(order.job, order.data_dir, config=config, max_concurrency=order.max_concurrency,
                           exporters=(QueuedSpanExporter(forward), QueuedLogExporter(forward)))  # fmt: skip
    if order.estimate_only:
        estimate = backfill.estimate()
        tell(BackfillJob(**{**asdict(order.job), "total_traces": estimate.traces, "estimate": asdict(estimate)}))
        return 0
    threading.Thread(target=_listen, args=(parent, backfill), name="backfill-orders", daemon=True).start()
    with _only_worker_of(Path(order.data_dir) / "backfill" / f"{order.job.job_id}.lock"):
        backfill.job.estimate = asdict(backfill.estimate())
        job = backfill.run(on_job=tell)
    return 0 if job.status != "failed" else 1


@contextlib.contextmanager
def _only_worker_of(path: Path) -> Iterator[None]:
    """Held while the job runs. A sidecar killed mid-job leaves its worker finishing what it had in flight
    (a dead parent is a PAUSE); the next sidecar's worker for the same job waits here for it to exit, and only
    then reads what the archive holds, so no trace is judged by both."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("backfill %s: waiting for the previous worker of this job to stop", path.stem)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # the lock goes with the process, however it ends


def _listen(parent: ParentChannel, backfill: Backfill) -> None:
    while True:
        frame = parent.recv()
        kind = decode(frame)[0] if frame is not None else PAUSE
        if kind == CANCEL:
            backfill.cancel()
        elif kind == PAUSE:
            backfill.pause()
            return


if __name__ == "__main__":
    main()

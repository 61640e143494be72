"""MemoryLimiter: keep the sidecar's memory under a limit by refusing data and shedding buffered traces,
in the spirit of the OpenTelemetry Collector's memory_limiter processor.

A sidecar shares its pod's memory limit with the app: an OOM kill loses every buffered trace and, before
the write-ahead log, whatever was only in memory. So the limiter watches the sidecar process's resident
memory every `check_interval`:

- above the soft limit (`limit - spike`), the receivers refuse new requests with retryable statuses
  (503 + Retry-After / UNAVAILABLE + RetryInfo: the client keeps the data and retries), and the assembler
  sheds its oldest traces (decided incomplete, `memory_cap`, so they are recorded as skipped, not lost
  silently), then the freed memory is handed back to the OS (glibc's malloc_trim: CPython frees the
  buffers but glibc keeps them, so RSS would stay high and the refusal would never end);
- below the soft limit again, it accepts.

Only the sidecar process is measured: the archive writer and the scoring worker are children with
their own bounds (`archive.max_queue`, `scoring.max_backlog`; the write-ahead log is on disk).

`limit: auto` (the default) takes 80 % of the container's memory limit (cgroup v2 `memory.max`, or v1
`memory.limit_in_bytes`) when there is one, and turns the limiter off when there is none; `spike` defaults
to 20 % of the limit, as the Collector's spike_limit_mib does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from pydantic import Field, model_validator

from tracejudge.config import ByteSize, Duration, StrictConfig

log = logging.getLogger(__name__)

_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
_NO_CGROUP_LIMIT = 2**60  # cgroup v1 writes a huge number for "unlimited"; v2 writes "max"
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class MemoryLimiterConfig(StrictConfig):
    limit: ByteSize | Literal["auto"] | None = "auto"
    spike: ByteSize | None = None
    check_interval: Duration = 1.0
    shed_fraction: float = Field(default=0.5, gt=0, le=1)  # of the assembler's buffered bytes, per check above

    @model_validator(mode="after")
    def _spike_under_limit(self) -> MemoryLimiterConfig:
        if isinstance(self.limit, int) and self.spike is not None and self.spike >= self.limit:
            raise ValueError(f"spike ({self.spike} B) must be smaller than limit ({self.limit} B)")
        return self

    def limits(self, container_limit: int | None) -> tuple[int, int] | None:
        """(soft, hard) limits in bytes, or None when the limiter is off."""
        limit = self.limit
        if limit == "auto":
            if container_limit is None:
                return None
            limit = int(container_limit * 0.8)
        if limit is None:
            return None
        spike = self.spike if self.spike is not None else limit // 5
        if spike >= limit:
            raise ValueError(f"memory_limiter.spike ({spike} B) must be smaller than its limit ({limit} B)")
        return limit - spike, limit


def container_memory_limit() -> int | None:
    """The cgroup's memory limit in bytes, or None when there is none (or no cgroup filesystem)."""
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _NO_CGROUP_LIMIT:
            return int(text)
    return None


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 where it cannot be read)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def _trimmer() -> Callable[[], object]:
    """glibc's malloc_trim(0), or a no-op where the C library has none."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return (lambda: trim(0)) if trim is not None else (lambda: None)


class MemoryLimiter:
    """Refuses while the process is over the soft limit; `shed` is called on each check above it.

    `refusing` is read by the receivers' consumer on every request: a bool, no lock."""

    def __init__(
        self,
        config: MemoryLimiterConfig,
        meter: metrics.Meter,
        shed: Callable[[float], int],
        *,
        measure: Callable[[], int] = resident_bytes,
        container_limit: int | None = None,
    ) -> None:
        self._config = config
        limits = config.limits(container_limit if container_limit is not None else container_memory_limit())
        self.soft_limit, self.hard_limit = limits if limits is not None else (0, 0)
        self.enabled = limits is not None
        self.refusing = False
        self._shed = shed
        self._measure = measure
        self._trim = _trimmer()
        self._rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-limiter", daemon=True)
        self._shed_traces = meter.create_counter(
            "tracejudge.memory_limiter.shed_traces",
            description="Buffered traces decided early (incomplete) because memory was over the soft limit",
        )
        meter.create_observable_gauge(
            "tracejudge.memory_limiter.refusing", [self._observe_refusing],
            description="1 while the receivers refuse data because memory is over the soft limit",
        )  # fmt: skip
        meter.create_observable_gauge(
            "tracejudge.memory_limiter.resident_bytes", [self._observe_rss], unit="By",
            description="The sidecar process's resident memory at the last check",
        )  # fmt: skip

    def start(self) -> None:
        if self.enabled:
            log.info("memory limiter: refusing data above %d MiB resident (limit %d MiB)",
                     self.soft_limit >> 20, self.hard_limit >> 20)  # fmt: skip
            self._thread.start()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self.refusing = False

    def check(self) -> None:
        """One measurement and what it calls for (the thread calls this every check_interval)."""
        rss = self._rss = self._measure()
        if rss <= self.soft_limit:
            if self.refusing:
                log.info("memory back under the soft limit (%d MiB resident): accepting data", rss >> 20)
            self.refusing = False
            return
        if not self.refusing:
            log.warning("memory over the soft limit (%d MiB resident, soft limit %d MiB): refusing data, "
                        "shedding the oldest buffered traces", rss >> 20, self.soft_limit >> 20)  # fmt: skip
        self.refusing = True
        shed = self._shed(self._config.shed_fraction)
        if shed:
            self._shed_traces.add(shed)
        gc.collect()
        self._trim()
        self._rss = self._measure()
        self.refusing = self._rss > self.soft_limit

    def _run(self) -> None:
        while not self._stop.wait(self._config.check_interval):
            try:
                self.check()
            except Exception:  # the limiter must never stop checking
                log.exception("memory limiter check failed")

    def _observe_refusing(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(int(self.refusing))]

    def _observe_rss(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(self._rss)]

"""Forwarder: every accepted OTLP request, re-sent unchanged to each downstream endpoint.

The receiver only appends to the write-ahead log (tracejudge/wal.py, never waits on a sender); per
endpoint, worker threads read the log through the endpoint's own cursor, send the original protobuf
bytes and retry retryable failures with exponential backoff for as long as it takes, so a downstream
outage, or a kill and restart, loses nothing the log holds. What is finally dropped (a non-retryable
answer; the log's oldest segments, when it is full and configured to drop them) is counted and logged.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import urllib3
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from tracejudge.exporter.config import ForwardEndpointConfig
from tracejudge.model import Signal
from tracejudge.otlp import GRPC_EXPORT_METHODS
from tracejudge.tls import client_ssl_context, grpc_channel_credentials
from tracejudge.wal import Record, RecordKind, WriteAheadLog

log = logging.getLogger(__name__)

# OTLP spec, "Failures": the gRPC codes and HTTP statuses a client retries.
RETRYABLE_GRPC = {
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}
RETRYABLE_HTTP = {429, 502, 503, 504}


@dataclass(frozen=True, slots=True)
class SendResult:
    ok: bool
    retryable: bool = False
    retry_after: float | None = None
    error: str = ""


class Transport(Protocol):
    def send(self, signal: Signal, payload: bytes) -> SendResult: ...

    def close(self) -> None: ...


class GrpcTransport:
    def __init__(self, config: ForwardEndpointConfig) -> None:
        target = config.url.partition("://")[2]
        options = [("grpc.max_send_message_length", -1)]
        if config.secure:
            self._channel = grpc.secure_channel(target, grpc_channel_credentials(config.tls), options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._calls = {
            signal: self._channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            for signal, method in GRPC_EXPORT_METHODS.items()
        }
        self._metadata = tuple((k.lower(), v.get_secret_value()) for k, v in config.headers.items())
        self._timeout = config.timeout
        self._compression = grpc.Compression.Gzip if config.compression == "gzip" else grpc.Compression.NoCompression

    def send(self, signal: Signal, payload: bytes) -> SendResult:
        try:
            self._calls[signal](payload, timeout=self._timeout, metadata=self._metadata, compression=self._compression)
        except grpc.RpcError as exc:
            return _grpc_failure(exc)
        return SendResult(ok=True)

    def close(self) -> None:
        self._channel.close()


def _grpc_failure(error: grpc.RpcError) -> SendResult:
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    retry_after = _retry_info_delay(error)
    retryable = code in RETRYABLE_GRPC or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None)
    details = error.details() if isinstance(error, grpc.Call) else str(error)
    return SendResult(ok=False, retryable=retryable, retry_after=retry_after, error=f"{code.name}: {details}")


def _retry_info_delay(error: grpc.RpcError) -> float | None:
    try:
        status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    except ValueError:
        return None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


class HttpTransport:
    def __init__(self, config: ForwardEndpointConfig) -> None:
        self._base = config.url
        self._gzip = config.compression == "gzip"
        self._headers = {k: v.get_secret_value() for k, v in config.headers.items()}
        self._headers["Content-Type"] = "application/x-protobuf"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        tls: dict[str, Any] = {}
        if config.secure:
            tls["ssl_context"] = client_ssl_context(config.tls)
            if config.tls is not None and config.tls.insecure_skip_verify:
                tls |= {"cert_reqs": "CERT_NONE", "assert_hostname": False}
        self._pool = urllib3.PoolManager(
            maxsize=config.workers, retries=False, timeout=urllib3.Timeout(total=config.timeout), **tls
        )

    def send(self, signal: Signal, payload: bytes) -> SendResult:
        body = gzip.compress(payload, compresslevel=1) if self._gzip else payload
        try:
            response = self._pool.request(
                "POST", f"{self._base}/v1/{signal.value}", body=body, headers=self._headers, preload_content=True
            )
        except urllib3.exceptions.HTTPError as exc:
            return SendResult(ok=False, retryable=True, error=f"{type(exc).__name__}: {exc}")
        if 200 <= response.status < 300:
            return SendResult(ok=True)
        return SendResult(
            ok=False,
            retryable=response.status in RETRYABLE_HTTP,
            retry_after=_parse_retry_after(response.headers.get("Retry-After")),
            error=f"HTTP {response.status}: {response.data[:200]!r}",
        )

    def close(self) -> None:
        self._pool.clear()


def _parse_retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class EndpointSender:
    """One downstream endpoint: its cursor on the write-ahead log, its transport and its worker threads.

    Workers take records in log order and deliver them concurrently; the cursor is committed up to the
    oldest record still in flight, so a kill at any moment replays (resends) only what was not
    confirmed delivered. Records this endpoint does not take (`kinds`) are passed over.
    """

    def __init__(self, config: ForwardEndpointConfig, wal: WriteAheadLog, kinds: frozenset[RecordKind],
                 meter: metrics.Meter) -> None:  # fmt: skip
        self.config = config
        self.name = config.url
        digest = hashlib.sha256(config.url.encode()).hexdigest()[:12]
        self.cursor = wal.cursor(f"forward-{digest}")
        self._kinds = kinds
        self._lock = threading.Lock()
        self._in_flight: deque[int] = deque()  # record numbers handed to workers, in log order
        self._done: set[int] = set()  # in flight and finished (delivered or dropped)
        self._transport: Transport = GrpcTransport(config) if config.protocol == "grpc" else HttpTransport(config)
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._workers = [
            threading.Thread(target=self._work, name=f"forward-{digest}-{i}", daemon=True)
            for i in range(config.workers)
        ]
        self._forwarded = meter.create_counter(
            "tracejudge.forwarder.sent_items", description="Items delivered downstream, by endpoint and signal"
        )
        self._dropped = meter.create_counter(
            "tracejudge.forwarder.dropped_items", description="Items given up on, by endpoint and reason"
        )
        self._retries = meter.create_counter(
            "tracejudge.forwarder.retries", description="Send attempts that failed and will be retried"
        )
        self._replayed = meter.create_counter(
            "tracejudge.forwarder.replayed_items",
            description="Items sent again after a restart (acknowledged before it, perhaps delivered: duplicates)",
        )
        self._last_drop_log = 0.0

    @property
    def depth(self) -> int:
        """Records not yet confirmed delivered."""
        return self.cursor.behind

    def start(self) -> None:
        if self.cursor.behind:
            log.info("forwarder %s: resending %d records kept from the last run", self.name, self.cursor.behind)
        for worker in self._workers:
            worker.start()

    def stop(self, deadline: float) -> None:
        """Keep sending until everything is delivered or `deadline`; what is left stays in the log."""
        self._draining.set()
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        for worker in self._workers:
            worker.join(5.0)
        self._transport.close()
        if self.cursor.behind:
            log.info("forwarder %s: %d records kept on disk for the next start", self.name, self.cursor.behind)

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._lock:  # take and register under one lock, so _in_flight stays in log order
                record = self.cursor.next(timeout=0)
                if record is not None:
                    if record.kind not in self._kinds:
                        self._commit_locked()
                        continue
                    self._in_flight.append(record.number)
            if record is None:
                if self._draining.is_set():
                    return
                with self._lock:
                    self._commit_locked()
                self.cursor.wait(timeout=0.2)  # without the lock, so other workers can finish theirs
                continue
            if record.number < self.cursor.replay_until:
                self._replayed.add(record.items, {"endpoint": self.name})
            if self._deliver(record):
                with self._lock:
                    self._done.add(record.number)
                    self._commit_locked()

    def _commit_locked(self) -> None:
        while self._in_flight and self._in_flight[0] in self._done:
            self._done.discard(self._in_flight.popleft())
        self.cursor.commit(self._in_flight[0] if self._in_flight else self.cursor.position)

    def _deliver(self, record: Record) -> bool:
        """True once delivered or dropped; False when stopped first (the record stays in the log)."""
        attempt = 0
        while True:
            result = self._transport.send(record.signal, record.payload)
            if result.ok:
                self._forwarded.add(record.items, {"endpoint": self.name, "signal": record.signal.value})
                return True
            if not result.retryable:
                self._drop(record, "rejected", result.error)
                return True
            self._retries.add(1, {"endpoint": self.name})
            delay = self._backoff(attempt, result.retry_after)
            attempt += 1
            if attempt == 1 or attempt % 10 == 0:
                log.warning("forwarder %s: %s; retrying in %.1fs (attempt %d)", self.name, result.error, delay, attempt)
            if self._stop.wait(delay):
                return False

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        retry = self.config.retry
        delay = min(retry.max_interval, retry.initial_interval * 2**attempt) * random.uniform(0.5, 1.0)
        return float(max(delay, retry_after or 0.0))

    def _drop(self, record: Record, reason: str, detail: str) -> None:
        self._dropped.add(record.items, {"endpoint": self.name, "reason": reason, "signal": record.signal.value})
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:
            self._last_drop_log = now
            log.error(
                "forwarder %s: dropped %d %s (%s: %s); see tracejudge_forwarder_dropped_items_total",
                self.name,
                record.items,
                record.signal.value,
                reason,
                detail,
            )


class Forwarder:
    """`endpoints` get every accepted request (INGEST records); `private` endpoints only tracejudge's
    own verdicts (VERDICTS records), when they go somewhere the app's data does not. `verdicts_to`
    names the endpoint that also takes VERDICTS records."""

    def __init__(
        self,
        endpoints: Iterable[ForwardEndpointConfig],
        wal: WriteAheadLog,
        meter: metrics.Meter,
        private: Iterable[ForwardEndpointConfig] = (),
        verdicts_to: str | None = None,
    ) -> None:
        def kinds(url: str, ingest: bool) -> frozenset[RecordKind]:
            verdicts = {RecordKind.VERDICTS} if verdicts_to and url == verdicts_to.rstrip("/") else set()
            return frozenset(({RecordKind.INGEST} if ingest else set()) | verdicts)

        self.senders = [EndpointSender(c, wal, kinds(c.url, True), meter) for c in endpoints]
        self.senders += [EndpointSender(c, wal, kinds(c.url, False), meter) for c in private]
        meter.create_observable_gauge(
            "tracejudge.forwarder.queue_items",
            [self._observe_depth],
            description="Records in the write-ahead log not yet delivered, by endpoint",
        )
        meter.create_observable_gauge(
            "tracejudge.forwarder.queue_disk_bytes",
            [self._observe_disk],
            unit="By",
            description="Bytes of the write-ahead log not yet delivered, by endpoint",
        )

    def start(self) -> None:
        for sender in self.senders:
            sender.start()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Send what is logged until `timeout_s`; what is left stays in the log for the next start."""
        deadline = time.monotonic() + timeout_s
        threads = [threading.Thread(target=s.stop, args=(deadline,)) for s in self.senders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _observe_depth(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(s.depth, {"endpoint": s.name}) for s in self.senders]

    def _observe_disk(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(s.cursor.behind_bytes, {"endpoint": s.name}) for s in self.senders]

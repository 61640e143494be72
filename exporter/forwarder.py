"""Forwarder: every accepted OTLP request, re-sent unchanged to each downstream endpoint.

The receiver only enqueues (never waits); per endpoint, worker threads send the original protobuf
bytes, retry retryable failures with exponential backoff for as long as the item is queued, and the
queue spills to disk, so a downstream outage of minutes loses nothing up to the disk cap. What is
finally dropped (disk cap reached, or a non-retryable answer) is counted and logged.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import urllib3
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from tracejudge.exporter.config import ForwardEndpointConfig
from tracejudge.exporter.spill_queue import QueueItem, SpillQueue
from tracejudge.model import Signal
from tracejudge.otlp import GRPC_EXPORT_METHODS

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
        target = config.url.removeprefix("grpc://")
        self._channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)])
        self._calls = {
            signal: self._channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            for signal, method in GRPC_EXPORT_METHODS.items()
        }
        self._metadata = tuple((k.lower(), v) for k, v in config.headers.items())
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
        self._headers = {**config.headers, "Content-Type": "application/x-protobuf"}
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._pool = urllib3.PoolManager(
            maxsize=config.workers, retries=False, timeout=urllib3.Timeout(total=config.timeout)
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
    """One downstream endpoint: its spill queue, its transport and its worker threads."""

    def __init__(self, config: ForwardEndpointConfig, queue_dir: Path, meter: metrics.Meter) -> None:
        self.config = config
        self.name = config.url
        digest = hashlib.sha256(config.url.encode()).hexdigest()[:12]
        self.queue = SpillQueue(queue_dir / digest, config.max_memory_queue, config.max_disk_queue)
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
        self._last_drop_log = 0.0

    def start(self) -> None:
        for worker in self._workers:
            worker.start()

    def submit(self, item: QueueItem) -> None:
        if not self.queue.put(item):
            self._drop(item, "queue_full", "the disk queue is at its cap")

    def stop(self, deadline: float) -> None:
        """Keep sending until the queue is empty or `deadline`; persist what is left to disk."""
        self._draining.set()
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self.queue.close()
        for worker in self._workers:
            worker.join(5.0)
        self.queue.persist()
        self._transport.close()
        if self.queue.depth:
            log.info("forwarder %s: %d items kept on disk for the next start", self.name, self.queue.depth)

    def _work(self) -> None:
        while not self._stop.is_set():
            item = self.queue.get(timeout=0.2)
            if item is None:
                if self._draining.is_set():
                    return
                continue
            self._deliver(item)

    def _deliver(self, item: QueueItem) -> None:
        attempt = 0
        while True:
            result = self._transport.send(item.signal, item.payload)
            if result.ok:
                self._forwarded.add(item.items, {"endpoint": self.name, "signal": item.signal.value})
                return
            if not result.retryable:
                self._drop(item, "rejected", result.error)
                return
            self._retries.add(1, {"endpoint": self.name})
            delay = self._backoff(attempt, result.retry_after)
            attempt += 1
            if attempt == 1 or attempt % 10 == 0:
                log.warning("forwarder %s: %s; retrying in %.1fs (attempt %d)", self.name, result.error, delay, attempt)
            if self._stop.wait(delay):
                self.queue.put(item)
                return

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        retry = self.config.retry
        delay = min(retry.max_interval, retry.initial_interval * 2**attempt) * random.uniform(0.5, 1.0)
        return float(max(delay, retry_after or 0.0))

    def _drop(self, item: QueueItem, reason: str, detail: str) -> None:
        self._dropped.add(item.items, {"endpoint": self.name, "reason": reason, "signal": item.signal.value})
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:
            self._last_drop_log = now
            log.error(
                "forwarder %s: dropped %d %s (%s: %s); see tracejudge_forwarder_dropped_items_total",
                self.name,
                item.items,
                item.signal.value,
                reason,
                detail,
            )


class Forwarder:
    """`endpoints` get every accepted request; `private` endpoints only what `submit_to` sends them
    (tracejudge's own verdicts, when they go somewhere the app's data does not)."""

    def __init__(
        self,
        endpoints: Iterable[ForwardEndpointConfig],
        queue_dir: Path,
        meter: metrics.Meter,
        private: Iterable[ForwardEndpointConfig] = (),
    ) -> None:
        self.forward_senders = [EndpointSender(config, queue_dir, meter) for config in endpoints]
        self.senders = [*self.forward_senders, *(EndpointSender(config, queue_dir, meter) for config in private)]
        meter.create_observable_gauge(
            "tracejudge.forwarder.queue_items",
            [self._observe_depth],
            description="Items waiting to be sent, by endpoint",
        )
        meter.create_observable_gauge(
            "tracejudge.forwarder.queue_disk_bytes",
            [self._observe_disk],
            unit="By",
            description="Bytes spilled to disk, by endpoint",
        )

    def start(self) -> None:
        for sender in self.senders:
            sender.start()

    def submit(self, signal: Signal, payload: bytes, items: int) -> None:
        item = QueueItem(signal, payload, items)
        for sender in self.forward_senders:
            sender.submit(item)

    def submit_to(self, url: str, signal: Signal, payload: bytes, items: int) -> None:
        """Queue for one endpoint only; `url` must be one of the forwarder's endpoints."""
        sender = next(sender for sender in self.senders if sender.name == url.rstrip("/"))
        sender.submit(QueueItem(signal, payload, items))

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Send what is queued until `timeout_s`; what is left stays on disk for the next start."""
        deadline = time.monotonic() + timeout_s
        threads = [threading.Thread(target=s.stop, args=(deadline,)) for s in self.senders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _observe_depth(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(s.queue.depth, {"endpoint": s.name}) for s in self.senders]

    def _observe_disk(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(s.queue.disk_bytes, {"endpoint": s.name}) for s in self.senders]

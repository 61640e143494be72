"""Self-telemetry: tracejudge's own metrics through opentelemetry-sdk, and the admin endpoint.

Prometheus scrapes `/metrics` on the admin listener; the same metrics can also be pushed by OTLP.
`/healthz` says the process is serving; `/readyz` says the receivers accept data (503 while
starting or draining), which is what a Kubernetes readiness probe wants.
"""

from __future__ import annotations

import logging
from typing import Literal

from aiohttp import web
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tracejudge import __version__
from tracejudge.aio import AiohttpServerThread
from tracejudge.config import Duration, StrictConfig, parse_host_port

log = logging.getLogger(__name__)


class TelemetryConfig(StrictConfig):
    prometheus_endpoint: str | None = "127.0.0.1:9464"
    otlp_endpoint: str | None = None
    otlp_interval: Duration = 30.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class SelfTelemetry:
    def __init__(self, config: TelemetryConfig) -> None:
        self._config = config
        self.registry = CollectorRegistry()
        readers: list[MetricReader] = [PrometheusMetricReader(registry=self.registry)]
        if config.otlp_endpoint:
            readers.append(
                PeriodicExportingMetricReader(
                    _otlp_metric_exporter(config.otlp_endpoint), export_interval_millis=config.otlp_interval * 1000
                )
            )
        resource = Resource.create({"service.name": "tracejudge", "service.version": __version__})
        self.provider = MeterProvider(metric_readers=readers, resource=resource)
        self.meter: metrics.Meter = self.provider.get_meter("tracejudge", __version__)
        self.ready = False
        self._admin: AiohttpServerThread | None = None

    def start(self) -> int | None:
        """Serve /metrics, /healthz and /readyz; returns the bound port, or None when disabled."""
        if not self._config.prometheus_endpoint:
            return None
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        host, port = parse_host_port(self._config.prometheus_endpoint)
        self._admin = AiohttpServerThread(app, host, port, "admin-http")
        bound = self._admin.start()
        log.info("metrics on http://%s:%d/metrics, health on /healthz and /readyz", host, bound)
        return bound

    def shutdown(self) -> None:
        if self._admin is not None:
            self._admin.stop()
        self.provider.shutdown()

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")


def _otlp_metric_exporter(url: str) -> MetricExporter:
    if url.startswith("grpc://"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

        return GrpcExporter(endpoint=url.removeprefix("grpc://"), insecure=True)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    return HttpExporter(endpoint=url.rstrip("/") + "/v1/metrics")

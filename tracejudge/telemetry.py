"""Self-telemetry: tracejudge's own metrics through opentelemetry-sdk, and the admin endpoint.

Prometheus scrapes `/metrics` on the admin listener; the same metrics can also be pushed by OTLP.
`/healthz` says the process is serving; `/readyz` says the receivers accept data (503 while
starting or draining), which is what a Kubernetes readiness probe wants. Other pages on the same listener
(the status page, tracejudge/status_page.py) are added with `add_routes` before `start`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Literal

from aiohttp import web
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from tracejudge import __version__
from tracejudge.aio import AiohttpServerThread
from tracejudge.config import Duration, OtlpUrl, StrictConfig, parse_host_port
from tracejudge.otlp_exporters import metric_exporter

log = logging.getLogger(__name__)


class TelemetryConfig(StrictConfig):
    prometheus_endpoint: str | None = "127.0.0.1:9464"
    otlp_endpoint: OtlpUrl | None = None
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
                    metric_exporter(config.otlp_endpoint), export_interval_millis=config.otlp_interval * 1000
                )
            )
        resource = Resource.create({"service.name": "tracejudge", "service.version": __version__})
        self.provider = MeterProvider(metric_readers=readers, resource=resource)
        self.meter: metrics.Meter = self.provider.get_meter("tracejudge", __version__)
        self.ready = False
        self.port: int | None = None  # bound by start(), None while disabled
        self._admin: AiohttpServerThread | None = None
        self._expositions: list[Callable[[], bytes]] = []
        self._routes: list[web.RouteDef] = []

    def add_exposition(self, source: Callable[[], bytes]) -> None:
        """Metrics another process records (the scoring worker's), served on /metrics with these: one
        endpoint to scrape. `source` gives Prometheus text; it is called off the event loop."""
        self._expositions.append(source)

    def add_routes(self, routes: Iterable[web.RouteDef]) -> None:
        """More pages on the admin listener (called before start): one port for people and scrapers alike."""
        self._routes.extend(routes)

    def metrics_text(self) -> bytes:
        """The whole exposition /metrics serves, this process's and every added source's (blocking: the
        scoring worker is asked for its own), for pages that summarise it."""
        return generate_latest(self.registry) + b"".join(source() for source in self._expositions)

    def start(self) -> None:
        """Serve /metrics, /healthz and /readyz (unless disabled); `port` is the bound port."""
        if not self._config.prometheus_endpoint:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.add_routes(self._routes)
        host, port = parse_host_port(self._config.prometheus_endpoint)
        self._admin = AiohttpServerThread(app, host, port, "admin-http")
        self.port = self._admin.start()
        page = f", status page on http://{host}:{self.port}/" if self._routes else ""
        log.info("metrics on http://%s:%d/metrics, health on /healthz and /readyz%s", host, self.port, page)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        if self._admin is not None:
            self._admin.shutdown(timeout_s)
        self.provider.shutdown(timeout_millis=timeout_s * 1000)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        if self._expositions:
            loop = asyncio.get_running_loop()
            body += b"".join(await asyncio.gather(*(loop.run_in_executor(None, s) for s in self._expositions)))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

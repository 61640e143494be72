from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tracejudge.testing import SidecarProcess as Sidecar

from otlp_peers import GrpcSink, HttpSink


@pytest.fixture
def grpc_sink() -> Iterator[GrpcSink]:
    sink = GrpcSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def http_sink() -> Iterator[HttpSink]:
    sink = HttpSink()
    yield sink
    sink.stop()


@pytest.fixture
def sidecar_factory(tmp_path: Path) -> Iterator[Callable[..., Sidecar]]:
    started: list[Sidecar] = []

    def make(forward: list[str], config: dict[str, Any] | None = None, name: str = "tj", start: bool = True) -> Sidecar:
        sidecar = Sidecar(tmp_path / name, forward, config)
        started.append(sidecar)
        return sidecar.start() if start else sidecar

    yield make
    for sidecar in started:
        sidecar.kill()

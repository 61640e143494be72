"""Run `tracejudge serve` as a child process, the way a user runs it, for tests and benchmarks.

Shipped in the package so that this project's tests and bench/, and users' own integration tests,
start the real CLI with the same harness: free loopback ports, a config file, a readiness wait,
an orderly SIGTERM stop, and the Prometheus metrics read back.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def child_processes(pid: int, module: str) -> list[int]:
    """Pids of `pid`'s children started as `python -m <module>` (tracejudge.scoring_worker, ...)."""
    marker = b"\0-m\0" + module.encode() + b"\0"
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if marker in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
            except OSError:
                continue
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.05) -> T:
    """Poll until `predicate()` is truthy or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


class MetricSamples:
    """Samples of a Prometheus text exposition."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, str, float]] = []
        for line in text.splitlines():
            if line and not line.startswith("#"):
                head, _, value = line.rpartition(" ")
                name, _, labels = head.partition("{")
                self.samples.append((name, labels, float(value)))

    @property
    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples}

    def get(self, metric: str, /, **labels: str) -> float:
        """Sum of the samples of `metric` whose labels include `labels` (a label may be called `name`)."""
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        return sum(v for n, lab, v in self.samples if n == metric and all(w in lab for w in wanted))


# How a bind to a taken port fails: asyncio's OSError (HTTP, /metrics), grpc's server start (OTLP/gRPC).
_PORT_TAKEN = (b"address already in use", b"Failed to bind to address")


class SidecarProcess:
    """`python -m tracejudge.cli serve` in its own session (signals sent to us do not reach it)."""

    def __init__(
        self,
        data_dir: Path,
        forward: list[str],
        config: dict[str, Any] | None = None,
        log_level: str = "INFO",
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
        cwd: Path | None = None,
        config_file: bool = True,
    ) -> None:
        """`launcher` replaces `python -m tracejudge.cli` (e.g. an installed `tracejudge` script);
        `cwd` is the directory it runs in.

        A `config` without a `scorers` key runs no scorers (it is written with `scorers: []`), unlike
        `tracejudge serve`'s default checks, so that a test sees only the verdicts it asked for.
        `config_file=False` passes no config at all (and drops TRACEJUDGE_CONFIG), as the README's first
        command runs: serve's defaults apply; `config` must then be None."""
        if not config_file and config is not None:
            raise ValueError("config_file=False runs without a config: pass config=None")
        self.data_dir = data_dir
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = data_dir / "tracejudge.yaml"
        if config_file:
            self.config_path.write_text(yaml.safe_dump({"scorers": [], **(config or {})}))
        else:
            self.env.pop("TRACEJUDGE_CONFIG", None)
        self._launcher = launcher or [sys.executable, "-m", "tracejudge.cli"]
        self._options = [
            *(["--config", str(self.config_path)] if config_file else []),
            "--data-dir", str(data_dir), "--log-level", log_level,
            *[arg for url in forward for arg in ("--forward", url)], *(extra_args or []),
        ]  # fmt: skip
        self._pick_ports()
        self.cwd = cwd
        self.log_path = data_dir / "tracejudge.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _pick_ports(self) -> None:
        self.grpc_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        self.args = [
            *self._launcher, "serve", *self._options, "--grpc", self.grpc_target,
            "--http", f"127.0.0.1:{self.http_port}", "--metrics", f"127.0.0.1:{self.admin_port}",
        ]  # fmt: skip

    def start(self, timeout: float = 30.0, attempts: int = 3) -> SidecarProcess:
        """Start and wait for /readyz; raises with the log's tail if it exits or never gets ready. A port
        free_port() found can be taken before the sidecar binds it (another process's outgoing
        connection, say): then it is started again on fresh ports."""
        for _ in range(attempts - 1):
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                return self._start_once(timeout)
            except RuntimeError:
                this_attempt = self.log_path.read_bytes()[logged:]
                if not any(sign in this_attempt for sign in _PORT_TAKEN):
                    raise
                self._pick_ports()
        return self._start_once(timeout)

    def _start_once(self, timeout: float) -> SidecarProcess:
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.args,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"{self.admin_url}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"tracejudge not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"tracejudge exited with {self.process.returncode}:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as an orchestrator stops it; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def interrupt_group(self, signum: int = signal.SIGINT, timeout: float = 30.0) -> int:
        """Signal the whole process group, as Ctrl-C in a terminal or a supervisor does."""
        os.killpg(self.pid, signum)
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def metrics(self) -> MetricSamples:
        with urllib.request.urlopen(f"{self.admin_url}/metrics", timeout=10) as response:
            return MetricSamples(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get(name, **labels)

"""An aiohttp application served from a daemon thread with its own event loop.

The OTLP HTTP receiver and the admin endpoint (/metrics, /healthz) both need one, while the rest
of tracejudge is threads; this keeps asyncio contained in one place.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from tracejudge.event_loop import new_event_loop

log = logging.getLogger(__name__)


class AiohttpServerThread:
    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        name: str,
        ssl_context: ssl.SSLContext | None = None,
        **runner_options: Any,
    ) -> None:
        """`ssl_context`: serve HTTPS (the OTLP/HTTP listener's `tls:`); `runner_options` go to aiohttp's AppRunner."""
        self._app = app
        self._ssl_context = ssl_context
        self._host = host
        self._port = port
        self._runner_options = runner_options
        self._loop = new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> int:
        """Bind and serve; returns the bound port (useful with port 0). Raises OSError if it cannot bind."""
        self._thread.start()
        return int(self._call(self._start()))

    async def _start(self) -> int:
        self._runner = web.AppRunner(self._app, access_log=None, **self._runner_options)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self._host, self._port, reuse_address=True, backlog=1024, ssl_context=self._ssl_context
        )
        await site.start()
        return int(self._runner.addresses[0][1])

    def shutdown(self, timeout_s: float = 5.0) -> None:
        if not self._thread.is_alive():
            return
        if self._runner is not None:
            try:
                self._call(self._runner.cleanup(), timeout_s)
            except concurrent.futures.TimeoutError:  # aiohttp may linger on a refused body (aiohttp#1800)
                log.warning("%s: connections still open after %gs; closing them", self._thread.name, timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

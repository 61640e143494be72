"""One factory for the event loops tracejudge runs (the OTLP/HTTP receiver, the scoring loop, the judges)."""

from __future__ import annotations

import asyncio


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (not on Windows): it roughly halves the event loop's own share of a judge
    call's CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()

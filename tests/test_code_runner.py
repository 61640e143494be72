"""CodeRunner: code scorers in threads under a timeout, and which threads a stuck scorer still holds."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tracejudge.scoring.code import CodeRunner


def test_a_call_past_its_timeout_holds_its_thread_until_it_returns() -> None:
    exhausted: list[list[str]] = []
    release = threading.Event()

    async def scenario() -> None:
        runner = CodeRunner(2, timeout_s=0.05, on_exhausted=exhausted.append)
        assert await runner.run("quick", lambda x: x + 1, {"x": 1}) == 2
        with pytest.raises(TimeoutError, match=r"slow did not return within 0\.05s"):
            await runner.run("slow", release.wait, {})
        assert exhausted == []  # one of two threads held
        release.set()
        await asyncio.sleep(0.2)  # the slow call returns; its thread is free again
        release.clear()
        for name in ("slow", "stuck"):
            with pytest.raises(TimeoutError):
                await runner.run(name, release.wait, {})
        assert exhausted == [["slow", "stuck"]]  # both threads held now: reported once, with the culprits
        with pytest.raises(TimeoutError):  # queued behind them, never started: holds nothing
            await runner.run("queued", release.wait, {})
        assert exhausted == [["slow", "stuck"]]
        release.set()
        runner.shutdown()

    asyncio.run(scenario())


def test_exceptions_from_the_function_reach_the_caller() -> None:
    def broken() -> None:
        raise ValueError("bad scorer")

    async def scenario() -> None:
        runner = CodeRunner(1, timeout_s=1.0)
        with pytest.raises(ValueError, match="bad scorer"):
            await runner.run("broken", broken, {})
        runner.shutdown()

    asyncio.run(scenario())

"""CodeRunner: code scorers in threads under a timeout, and which threads a stuck scorer still holds."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tracejudge.scoring.code import CodeRunner, CodeTimeout


def test_calls_past_their_timeout_that_still_hold_every_thread_a_timeout_later_are_reported_once() -> None:
    exhausted: list[list[str]] = []
    release = threading.Event()

    async def scenario() -> None:
        runner = CodeRunner(2, timeout_s=0.05, on_exhausted=exhausted.append)
        assert await runner.run("quick", lambda x: x + 1, {"x": 1}) == 2
        with pytest.raises(CodeTimeout, match=r"slow did not return within 0\.05s"):
            await runner.run("slow", release.wait, {})
        release.set()
        await asyncio.sleep(0.2)  # the slow call returns; its thread is free again
        release.clear()
        for name in ("slow", "stuck"):
            with pytest.raises(CodeTimeout):
                await runner.run(name, release.wait, {})
        assert exhausted == []  # both threads held, but a slow scorer gets one more timeout to return
        with pytest.raises(CodeTimeout):  # queued behind them, never started: holds nothing
            await runner.run("queued", release.wait, {})
        await asyncio.sleep(0.1)
        assert exhausted == [["slow", "stuck"]]  # still held: reported once, with the culprits
        release.set()
        runner.shutdown()

    asyncio.run(scenario())


def test_slow_calls_that_return_within_one_more_timeout_are_not_reported() -> None:
    exhausted: list[list[str]] = []

    def nap(seconds: float) -> None:
        time.sleep(seconds)

    async def scenario() -> None:
        runner = CodeRunner(2, timeout_s=0.1, on_exhausted=exhausted.append)
        calls = [runner.run("slow", nap, {"seconds": 0.15}) for _ in range(2)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(result, CodeTimeout) for result in results)  # both threads held for a while
        await asyncio.sleep(0.2)
        assert exhausted == []
        runner.shutdown()

    asyncio.run(scenario())


def test_a_timeout_the_function_raises_itself_is_its_own_exception() -> None:
    def calls_a_dead_service() -> None:
        raise TimeoutError("read timed out")

    async def scenario() -> None:
        runner = CodeRunner(1, timeout_s=5.0)
        with pytest.raises(TimeoutError, match="read timed out") as raised:
            await runner.run("api", calls_a_dead_service, {})
        assert not isinstance(raised.value, CodeTimeout)
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

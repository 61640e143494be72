"""Code scorers: plain Python functions that judge a trace, as MLflow's `@scorer` does.

A function declares what it needs by parameter name — `inputs`, `outputs`, `expectations`,
`trace`; or, judging a whole conversation (`target: session`), `session` / `traces` (its turns, in
order: scoring/view.py Turn) and `conversation` (the turns as chat messages) — and returns a bool,
a number, a string, a Feedback or a list of Feedbacks. tracejudge
only loads them from an importable `module:function` named in the config file, never from the
network. They run in threads with a timeout (CodeRunner); an exception or a timeout becomes an
assessment with `error` set (scoring/assessments.py), so a broken scorer shows up in the results
instead of vanishing. They are loaded as plain callables: `@scorer` (tracejudge.scorers) marks them for
users, not for us.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .view import SessionView, TraceView

BINDABLE = ("inputs", "outputs", "expectations", "trace")
SESSION_BINDABLE = ("session", "traces", "conversation")


class CodeScorerError(Exception):
    """A `module:function` that cannot be loaded or does not take scorer arguments."""


def load_function(reference: str, session: bool = False) -> Callable[..., Any]:
    """The function `reference` names, checked to take only what its target offers (`session`: a conversation)."""
    module_name, _, attribute = reference.partition(":")
    try:
        function: Callable[..., Any] = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise CodeScorerError(f"cannot load code scorer {reference!r}: {exc}") from exc
    if not callable(function):
        raise CodeScorerError(f"code scorer {reference!r} is not callable")
    parameters = list(inspect.signature(function).parameters)
    allowed = SESSION_BINDABLE if session else BINDABLE
    unknown = [p for p in parameters if p not in allowed]
    if unknown and not session and all(p in SESSION_BINDABLE for p in unknown):
        raise CodeScorerError(f"code scorer {reference!r} takes {unknown}: it judges conversations, so give it "
                              "`target: session`")  # fmt: skip
    if unknown:
        raise CodeScorerError(f"code scorer {reference!r} takes {unknown}; parameters must be among {allowed}")
    return function


def bind_arguments(function: Callable[..., Any], view: TraceView | SessionView) -> dict[str, Any]:
    available: dict[str, Any]
    if isinstance(view, SessionView):
        turns = list(view.turns)
        available = {"session": turns, "traces": turns, "conversation": view.messages()}
    else:
        available = {"inputs": view.request, "outputs": view.response, "expectations": dict(view.expectations),
                     "trace": view}  # fmt: skip
    return {name: available[name] for name in inspect.signature(function).parameters}


class CodeTimeout(Exception):
    """A code scorer's call outlived its timeout (not a TimeoutError the scorer raised itself)."""


class CodeRunner:
    """The threads code scorers run in, each call bounded by `timeout_s`.

    Python cannot stop a thread: a call that outlives its timeout is reported as timed out but keeps
    its thread until it returns, and one that never returns keeps it for good (spinning, it also takes
    a share of the GIL from everything else in the process). When such calls hold every thread, and
    still do one more `timeout_s` later (a slow scorer has returned by then), no code scorer can run
    here any more: `on_exhausted` is called, once, with the names of the scorers holding them, so the
    owner can replace the process.
    """

    def __init__(self, workers: int, timeout_s: float, on_exhausted: Callable[[list[str]], None] | None = None) -> None:
        self.timeout_s = timeout_s
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="code-scorer")
        self._on_exhausted = on_exhausted
        self._held: Counter[str] = Counter()  # scorer name -> calls past their timeout, still running
        self._check_pending = False

    async def run(self, name: str, function: Callable[..., Any], arguments: dict[str, Any]) -> Any:
        """The function's result, or what it raised; CodeTimeout after `timeout_s`."""
        future = self._executor.submit(function, **arguments)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except asyncio.TimeoutError as exc:  # not the builtin TimeoutError before Python 3.11
            if future.done() and not future.cancelled():
                raise  # the function's own TimeoutError
            if future.running():
                self._hold(name, future)
            raise CodeTimeout(f"{name} did not return within {self.timeout_s:g}s") from exc

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _hold(self, name: str, future: Future[Any]) -> None:
        """Called on the event loop's thread; the release comes from the scorer's thread via the loop."""
        self._held[name] += 1
        loop = asyncio.get_running_loop()
        future.add_done_callback(lambda _: _call_soon(loop, self._release, name))
        if self._on_exhausted is not None and not self._check_pending and self._held.total() >= self.workers:
            self._check_pending = True
            loop.call_later(self.timeout_s, self._check_exhausted)

    def _check_exhausted(self) -> None:
        self._check_pending = False
        if self._on_exhausted is not None and self._held.total() >= self.workers:
            on_exhausted, self._on_exhausted = self._on_exhausted, None
            on_exhausted(sorted(self._held))

    def _release(self, name: str) -> None:
        self._held[name] -= 1
        if self._held[name] <= 0:
            del self._held[name]


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[str], None], name: str) -> None:
    """From a scorer's thread; a call that returns after its loop has closed has nobody left to tell."""
    if not loop.is_closed():
        loop.call_soon_threadsafe(callback, name)

"""JudgeBudget: one spend limit (`judges.budget`) for every judge call of a data directory's processes.

    budget = JudgeBudget(config, data_dir / "judge_spend.sqlite", role="live")
    pool = JudgePool(endpoints, on_usage=budget.spend)        # every answered attempt is charged
    if await budget.admit(): ... judge the pair ...; budget.release()
    else: record the pair as skipped (`budget`)

Why a ledger file: live scoring runs in the scoring worker, a sidecar's backfill in a process of its own and an
offline backfill in the CLI's; a limit per process would let three processes spend three times it. They share
spend per minute in a SQLite file in the data directory (stdlib; its locking is made for several processes):
each process writes what it spent and reads the window's totals at most every `sync_interval_s` (0.5 s), one
transaction. A process killed loses at most that much of its spend from the ledger.

Admission is per pair, so the effective rate degrades evenly across scorers: a pair is refused (skipped) when
the window's spend, plus what this process spent since its last sync, plus the pair's own cost (the mean of a
pair so far; 1,000 tokens before any has finished) passes a limit. A pair that would fit only once the pairs
this process has in flight are paid for waits for them instead: a burst of decided traces (the assembler hands
on many at once) would otherwise reserve the budget for pairs in flight, skip the burst, and leave the budget
unspent (a test's burst of 60 pairs spent 1,080 of 4,000 tokens that way). Spend over a window can pass a
limit by what was in flight when it was reached, no more. A backfill may use `backfill_share` of
each limit, so that live scoring keeps the rest. Reaching a limit and getting back under it are logged; the
skips are counted under reason `budget` like any other, and the sidecar's metrics show spend against each limit.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .config import JudgeBudgetConfig

log = logging.getLogger(__name__)

Role = Literal["live", "backfill"]
LEDGER_NAME = "judge_spend.sqlite"  # in the data directory
# A judge pair's cost before one has finished: the builtin judges' prompts alone are ~250 tokens (4 characters a
# token), and traced content adds up to judges.*.max_content_chars / 4 (5,000) per section; a guess on the safe side.
PRIOR_TOKENS_PER_PAIR = 1000.0
_WINDOWS = {"hour": 60, "day": 1440}  # minutes
_KEEP_MINUTES = 1441


@dataclass(frozen=True)
class Limit:
    name: str  # the config key: tokens_per_hour, cost_per_day, ...
    unit: Literal["tokens", "cost"]
    minutes: int
    amount: float


@dataclass(frozen=True)
class LimitState:
    limit: Limit
    spent: float  # over the window, every process's


def limits_of(config: JudgeBudgetConfig) -> list[Limit]:
    out = []
    for unit in ("tokens", "cost"):
        for window, minutes in _WINDOWS.items():
            name = f"{unit}_per_{window}"
            amount = getattr(config, name)
            if amount is not None:
                out.append(Limit(name, unit, minutes, float(amount)))
    return out


class SpendLedger:
    """Spend per (minute, role) in a SQLite file several processes share (the role, live or backfill, is for
    whoever reads the file: `sqlite3 judge_spend.sqlite 'SELECT role, sum(tokens) FROM spend GROUP BY role'`)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = _opened(path)
        except sqlite3.DatabaseError as exc:  # not a database (a truncated copy, another file): set aside, begin anew
            aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
            log.error("judge budget ledger %s is unreadable (%s): moved to %s; spend is counted from now on",
                      path, exc, aside.name)  # fmt: skip
            path.replace(aside)
            self._db = _opened(path)

    def add(self, spent: dict[tuple[int, str], tuple[int, float]], now_minute: int) -> None:
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO spend VALUES (?, ?, ?, ?) ON CONFLICT (minute, role) "
                "DO UPDATE SET tokens = tokens + excluded.tokens, cost = cost + excluded.cost",
                [(minute, role, tokens, cost) for (minute, role), (tokens, cost) in spent.items()],
            )
            self._db.execute("DELETE FROM spend WHERE minute < ?", (now_minute - _KEEP_MINUTES,))

    def totals(self, now_minute: int) -> dict[tuple[str, int], float]:
        """(unit, window minutes) -> spend over the window ending with the current minute, all roles."""
        out: dict[tuple[str, int], float] = {}
        with self._lock:
            for minutes in _WINDOWS.values():
                tokens, cost = self._db.execute(
                    "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(cost), 0.0) FROM spend WHERE minute > ?",
                    (now_minute - minutes,),
                ).fetchone()
                out[("tokens", minutes)], out[("cost", minutes)] = float(tokens), float(cost)
        return out

    def states(self, limits: Sequence[Limit], now_minute: int) -> list[LimitState]:
        totals = self.totals(now_minute)
        return [LimitState(limit, totals[(limit.unit, limit.minutes)]) for limit in limits]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _opened(path: Path) -> sqlite3.Connection:
    # autocommit off by default: each add/totals is one transaction; timeout: wait for another process's
    db = sqlite3.connect(path, timeout=10.0, check_same_thread=False)
    try:
        with db:
            db.execute("PRAGMA journal_mode=WAL")
            # No fsync per commit (a sync runs on the scoring loop every 0.5 s): WAL's NORMAL loses the last
            # commits to a power loss only, which is the ledger's accepted loss (a killed process loses 0.5 s).
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS spend (minute INTEGER NOT NULL, role TEXT NOT NULL, "
                       "tokens INTEGER NOT NULL, cost REAL NOT NULL, PRIMARY KEY (minute, role))")  # fmt: skip
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


class JudgeBudget:
    """A process's view of the shared budget. Not thread-safe beyond what its callers need: admit, release and
    spend are called from one event loop; `states` (metrics, the status page) reads the ledger."""

    def __init__(self, config: JudgeBudgetConfig, path: Path, role: Role = "live", *,
                 clock: Callable[[], float] = time.time, sync_interval_s: float = 0.5) -> None:  # fmt: skip
        self.config = config
        self._role: Role = role
        self._limits = limits_of(config)
        self._share = config.backfill_share if role == "backfill" else 1.0
        self._ledger = SpendLedger(path)
        self._clock = clock
        self._sync_interval_s = sync_interval_s
        self._synced_at = float("-inf")
        self._totals: dict[tuple[str, int], float] = {}
        self._unsynced: dict[tuple[int, str], tuple[int, float]] = {}  # (minute, role) -> spent since the last sync
        self._in_flight = 0
        self._done_pairs = 0
        self._spent_tokens = 0  # this process's, since it started
        self._spent_cost = 0.0
        self._unpriced: set[str] = set()
        self._refusing: Limit | None = None
        self._released: asyncio.Event | None = None  # set when an in-flight pair ends: waiting pairs look again
        self._refused = 0  # pairs refused since the limit was reached

    @property
    def cost_so_far(self) -> float | None:
        """This process's judge cost since it started; None without prices."""
        return self._spent_cost if self.config.prices else None

    async def admit(self, wait: bool = True) -> bool:
        """Whether one more judge pair may run; if so it is in flight until release(). While it fits only once
        this process's pairs in flight are paid for, it waits for them; not with `wait` False (the caller holds
        pairs it was admitted that will not run before it returns: waiting on them would never end)."""
        while True:
            self._sync_if_due()
            over = self._over(in_flight=False)
            if over is not None:
                return self._refuse(over)
            crowded = self._over(in_flight=True) if self._in_flight else None
            if crowded is None:
                break
            if not wait:
                return self._refuse(crowded)
            if self._released is None:
                self._released = asyncio.Event()
            await self._released.wait()
        if self._refusing is not None:
            log.info("judge budget: under %s again; %d judge pairs were skipped (budget) meanwhile",
                     self._refusing.name, self._refused)  # fmt: skip
            self._refusing = None
        self._in_flight += 1
        return True

    def _refuse(self, over: Limit) -> bool:
        if self._refusing is None:
            self._refusing, self._refused = over, 0
            log.warning("judge budget %s reached (%s spent over the last %s%s): sampled judge pairs are "
                        "recorded as skipped (budget) until spend falls under it", over.name,
                        _amount(over.unit, self._used(over)), _window_text(over.minutes),
                        f", {self._share:.0%} of it for a backfill" if self._share < 1 else "")  # fmt: skip
        self._refused += 1
        return False

    def release(self, pairs: int = 1) -> None:
        if not pairs:
            return
        self._in_flight -= pairs
        self._done_pairs += pairs
        if self._released is not None:
            released, self._released = self._released, None
            released.set()

    def spend(self, model: str, input_tokens: int, output_tokens: int) -> None:
        """One answered judge attempt (JudgePool's on_usage)."""
        tokens = input_tokens + output_tokens
        if self.config.prices and self.config.price_of(model) is None and model not in self._unpriced:
            self._unpriced.add(model)
            log.warning("judge budget: no price for %s in judges.budget.prices (and no `default`); its tokens are "
                        "charged at the table's highest prices", model)  # fmt: skip
        cost = self.config.cost(model, input_tokens, output_tokens)
        key = (int(self._clock() // 60), self._role)
        before_tokens, before_cost = self._unsynced.get(key, (0, 0.0))
        self._unsynced[key] = (before_tokens + tokens, before_cost + cost)
        self._spent_tokens += tokens
        self._spent_cost += cost

    def sync(self) -> None:
        """Write what this process spent and read the window's totals, if the last sync is `sync_interval_s` old
        (admit() does too; a caller ticking this keeps the ledger current when no pair comes)."""
        self._sync_if_due()

    def flush(self) -> None:
        """Write what this process spent to the ledger now (at shutdown, at the end of a job)."""
        self._sync_if_due(force=True)

    def close(self) -> None:
        self.flush()
        self._ledger.close()

    def states(self) -> list[LimitState]:
        """Every limit with the window's spend, as the ledger has it now (every process's synced spend)."""
        return self._ledger.states(self._limits, int(self._clock() // 60))

    def describe(self) -> str:
        """Each limit as it stands, what this role may use of it, in words (a backfill's estimate shows it)."""
        lines = []
        for state in self.states():
            limit = state.limit
            share = f"; a backfill may use {self._share:.0%} of it" if self._share < 1 else ""
            left = max(0.0, limit.amount * self._share - state.spent)
            amount, spent = _amount(limit.unit, limit.amount), _amount(limit.unit, state.spent)
            lines.append(f"judges.budget {limit.name} {amount}: {spent} spent over the last "
                         f"{_window_text(limit.minutes)}{share}; {_amount(limit.unit, left)} left")  # fmt: skip
        return "\n".join(lines)

    def _sync_if_due(self, force: bool = False) -> None:
        now = self._clock()
        if not force and now - self._synced_at < self._sync_interval_s:
            return
        minute = int(now // 60)
        try:
            if self._unsynced:
                self._ledger.add(self._unsynced, minute)
            self._totals = self._ledger.totals(minute)
        except sqlite3.Error as exc:  # spend stays local and is written at the next sync
            log.warning("judge budget ledger: %s; trying again in %.1fs", exc, self._sync_interval_s)
            self._synced_at = now
            return
        self._unsynced.clear()
        self._synced_at = now

    def _over(self, in_flight: bool) -> Limit | None:
        """The first limit one more pair would pass: over what is spent, or also over what is in flight."""
        for limit in self._limits:
            pairs = 1 + (self._in_flight if in_flight else 0)
            if self._used(limit) + pairs * self._per_pair(limit.unit) > limit.amount * self._share:
                return limit
        return None

    def _used(self, limit: Limit) -> float:
        """Spent over the limit's window: every process's in the ledger, and this one's since its last sync."""
        index = 0 if limit.unit == "tokens" else 1  # a minute or two of entries at most: summed as asked
        local = sum(spent[index] for spent in self._unsynced.values())
        return self._totals.get((limit.unit, limit.minutes), 0.0) + local

    def _per_pair(self, unit: str) -> float:
        """What a pair costs, on average so far in this process (a prior before the first has finished)."""
        if unit == "tokens":
            return self._spent_tokens / self._done_pairs if self._done_pairs else PRIOR_TOKENS_PER_PAIR
        if self._done_pairs:
            return self._spent_cost / self._done_pairs
        highest = self.config.highest_price
        return PRIOR_TOKENS_PER_PAIR * max(highest.input, highest.output) / 1e6


class BudgetGauges:
    """The sidecar's view of the ledger as metrics: `tracejudge.judge.budget.spent{limit}` (every process's spend
    over the limit's window) and `tracejudge.judge.budget.limit{limit}`; the status page reads the same."""

    def __init__(self, config: JudgeBudgetConfig, path: Path, meter: metrics.Meter,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self._limits = limits_of(config)
        self._ledger = SpendLedger(path)
        self._clock = clock
        meter.create_observable_gauge("tracejudge.judge.budget.spent", [self._observe_spent],
                                      description="Judge spend over each judges.budget limit's window "
                                                  "(tokens, or cost in the prices' currency), by limit")  # fmt: skip
        meter.create_observable_gauge("tracejudge.judge.budget.limit", [self._observe_limit],
                                      description="Each judges.budget limit, by limit")  # fmt: skip

    def _observe_spent(self, _options: CallbackOptions) -> list[Observation]:
        try:
            states = self._ledger.states(self._limits, int(self._clock() // 60))
        except sqlite3.Error as exc:
            log.warning("judge budget ledger unreadable: %s", exc)
            return []
        return [Observation(state.spent, {"limit": state.limit.name}) for state in states]

    def _observe_limit(self, _options: CallbackOptions) -> list[Observation]:
        return [Observation(limit.amount, {"limit": limit.name}) for limit in self._limits]

    def close(self) -> None:
        self._ledger.close()


def _amount(unit: str, value: float) -> str:
    return f"{value:,.0f} tokens" if unit == "tokens" else f"{value:,.4f}"


def _window_text(minutes: int) -> str:
    return "hour" if minutes == 60 else "24 hours"

"""Conversations: the traces that share a session id, buffered as compact turns until the conversation is over.

Multi-turn scorers (`target: session`) judge a whole conversation once, after it ends (MLflow's rule: no new
trace with that session id for a while, 5 minutes by default). The store here keeps, per open session, only
what those judges read of each trace (scoring/view.py Turn: the request, the answer, the tool calls and the
ids; never spans), in order of the traces' start, and says when a session is due:

- `idle`: no new turn for `sessions.idle`;
- `ended`: a root span said so (`tracejudge.session.end = true`) or the control plane was told (end_session);
- `max_turns` / `max_age`: the conversation reached its caps; it is judged and closed (later turns with the same
  id start a new conversation);
- `memory_cap`: the turns of all sessions exceed `sessions.max_bytes`; the oldest open session is judged early
  (flagged in the verdict's metadata). Sessions already judged are forgotten first.

A judged session is kept (until `max_age` after its first turn, or the byte cap needs its room): a turn that
arrives later re-opens it, and its next verdict supersedes the last (`overrides`).

Durable: with a journal file every change is appended to it (one JSON line each, written to the kernel before the
trace is reported finished, so a kill of the process loses none); at start the open and judged sessions are
rebuilt from it, their idle clocks continuing from the wall-clock time of their last turn. The journal is
rewritten from the live sessions once it holds more than twice what they need.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .config import SessionsConfig
from .view import SessionView, ToolCall, Turn

__all__ = ["DueSession", "Session", "SessionStore"]

log = logging.getLogger(__name__)

_COMPACT_ABOVE = 1 << 20  # a journal smaller than this is never rewritten


@dataclass(slots=True)
class Session:
    session_id: str
    turns: list[Turn] = field(default_factory=list)
    scorers: set[str] = field(default_factory=set)  # the session scorers that sampled it
    passed: frozenset[str] = frozenset()  # those whose filter_string its first trace matches
    started_at: float = 0.0  # wall clock of the first turn's arrival (max_age counts from it)
    last_seen: float = 0.0  # wall clock of the last turn's arrival (idle counts from it)
    reason: str | None = None  # set when due before its idle time: ended, max_turns, max_age, memory_cap
    judged_turns: int = 0  # turns its last verdicts saw; fewer than len(turns): it grew since
    verdicts: dict[str, str] = field(default_factory=dict)  # scorer -> the assessment_id of its last verdict
    judging: bool = False  # handed out by due(), not yet judged
    size: int = 0

    @property
    def open(self) -> bool:
        """Has turns its verdicts have not seen."""
        return len(self.turns) > self.judged_turns

    def view(self) -> SessionView:
        return SessionView(self.session_id, tuple(self.turns))


@dataclass(frozen=True, slots=True)
class DueSession:
    """A session to judge now: its view as of this moment, why now, and the verdicts the new ones supersede."""

    session: Session
    view: SessionView
    reason: str
    scorers: frozenset[str]
    passed: frozenset[str]
    superseded: dict[str, str]


class SessionStore:
    """Open conversations (`_open`, in order of last activity, oldest first: the idle scan stops at the first
    that is not idle) apart from judged ones (`_judged`, kept for a later turn to re-open), so that the 10 per
    second scans never walk the day's judged conversations."""

    def __init__(self, config: SessionsConfig, journal: Path | None = None) -> None:
        self.config = config
        self._open: dict[str, Session] = {}
        self._judged: dict[str, Session] = {}  # in order of their verdicts
        self._flagged: set[str] = set()  # open sessions due before their idle time (Session.reason set)
        self._bytes = 0
        self._next_age_scan = 0.0
        self._journal_path = journal
        self._journal_bytes = 0
        self._file: Any = None
        if journal is not None:
            journal.parent.mkdir(parents=True, exist_ok=True)
            self._load(journal)
            self._file = journal.open("ab", buffering=0)

    # --- what comes in ----------------------------------------------------------------------------

    def add(self, session_id: str, turn: Turn, scorers: Iterable[str], passed: frozenset[str],
            ends: bool = False) -> None:  # fmt: skip
        """A trace of the conversation `session_id`. `scorers`: the session scorers sampling it; `passed`: those
        whose filter this trace matches (kept only if it is the session's first trace). A trace seen before (a
        replay after a restart) is not added twice."""
        now = time.time()
        names = sorted(scorers)
        self._apply_turn(session_id, turn, names, passed, ends, now)
        self._append({"op": "turn", "s": session_id, "t": _turn_json(turn), "n": names, "p": sorted(passed),
                      "e": ends, "w": now})  # fmt: skip
        self._enforce_cap()

    def end(self, session_id: str) -> bool:
        """The conversation is over (the control plane was told): judged at the next tick. False if unknown."""
        session = self._open.get(session_id)
        if session is None:
            return False
        self._flag(session, "ended")
        self._append({"op": "end", "s": session_id})
        return True

    def end_all(self, reason: str) -> int:
        """Every open conversation is over now (`reason`: shutdown, where nothing keeps them); how many."""
        ending = [s for s in self._open.values() if not s.judging]
        for session in ending:
            self._flag(session, reason)
        return len(ending)

    @property
    def durable(self) -> bool:
        """Kept in a journal: open conversations outlive this process."""
        return self._journal_path is not None

    # --- what goes out ----------------------------------------------------------------------------

    def due(self, now: float | None = None) -> list[DueSession]:
        """The sessions to judge now; each is handed out once until judged() or released()."""
        now = time.time() if now is None else now
        if now >= self._next_age_scan:
            self._scan_ages(now)
        found = [self._hand_out(self._open[i], self._open[i].reason or "idle") for i in list(self._flagged)
                 if i in self._open and not self._open[i].judging]  # fmt: skip
        for session in self._open.values():
            if now - session.last_seen < self.config.idle:
                break  # activity order: the rest are younger
            if not session.judging and session.reason is None:
                found.append(self._hand_out(session, "idle"))
        return found

    def judged(self, due: DueSession, verdicts: dict[str, str]) -> None:
        """`due` was judged: `verdicts` maps each scorer to its new verdict's assessment_id."""
        session = due.session
        session.judging = False
        session.judged_turns = len(due.view.turns)
        session.verdicts.update(verdicts)
        closes = due.reason in ("max_turns", "max_age")
        self._append({"op": "judged", "s": session.session_id, "k": session.judged_turns, "v": verdicts,
                      "c": closes})  # fmt: skip
        self._settle(session, closes)

    def released(self, due: DueSession) -> None:
        """`due` could not be judged now (stopping): it stays as it was, for the next tick or the next start."""
        due.session.judging = False

    def open_sessions(self) -> list[Session]:
        return list(self._open.values())

    @property
    def sessions(self) -> int:
        return len(self._open) + len(self._judged)

    @property
    def turns(self) -> int:
        return sum(len(s.turns) for s in (*self._open.values(), *self._judged.values()))

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # --- inside -----------------------------------------------------------------------------------

    def _hand_out(self, session: Session, reason: str) -> DueSession:
        session.judging = True
        return DueSession(session, session.view(), reason, frozenset(session.scorers), session.passed,
                          dict(session.verdicts))  # fmt: skip

    def _flag(self, session: Session, reason: str) -> None:
        session.reason = reason
        self._flagged.add(session.session_id)

    def _settle(self, session: Session, closes: bool) -> None:
        """After a verdict: closed (its caps), back to waiting (it grew meanwhile), or kept as judged."""
        session_id = session.session_id
        if session.open and not closes:
            session.reason = None
            self._flagged.discard(session_id)
            return
        self._open.pop(session_id, None)
        self._flagged.discard(session_id)
        session.reason = None
        if closes:
            self._bytes -= session.size
        else:
            self._judged[session_id] = session

    def _scan_ages(self, now: float) -> None:
        """Once a second: open sessions past max_age are due; judged ones past it are forgotten."""
        self._next_age_scan = now + 1.0
        for session in self._open.values():
            if session.reason is None and now - session.started_at >= self.config.max_age:
                self._flag(session, "max_age")
        for session in list(self._judged.values()):
            if now - session.started_at >= self.config.max_age:
                self._forget(session)

    def _apply_turn(self, session_id: str, turn: Turn, names: list[str], passed: frozenset[str], ends: bool,
                    now: float) -> None:  # fmt: skip
        # Re-inserted last: the open dict stays in activity order. A judged session that grows is open again.
        session = self._open.pop(session_id, None) or self._judged.pop(session_id, None)
        if session is None:
            session = Session(session_id, started_at=now)
        self._open[session_id] = session
        if any(t.trace_id == turn.trace_id for t in session.turns):
            if not session.open and not session.judging:  # a replay of a judged session's turn: still judged
                self._open.pop(session_id)
                self._judged[session_id] = session
            return
        position = len(session.turns)
        while position and session.turns[position - 1].timestamp_ms > turn.timestamp_ms:
            position -= 1
        session.turns.insert(position, turn)
        if position == 0:
            session.passed = passed  # MLflow's rule: a session's filter is its first trace's
        session.scorers.update(names)
        session.last_seen = now
        session.size += turn.size
        self._bytes += turn.size
        if ends:
            self._flag(session, "ended")
        elif len(session.turns) >= self.config.max_turns:
            self._flag(session, "max_turns")

    def _enforce_cap(self) -> None:
        """Over the byte cap: forget judged sessions (judged longest ago first), then judge the oldest open one
        early (once judged it is forgotten first in turn)."""
        while self._bytes > self.config.max_bytes and self._judged:
            self._forget(next(iter(self._judged.values())))
        if self._bytes <= self.config.max_bytes:
            return
        if any(self._open[i].reason == "memory_cap" for i in self._flagged if i in self._open):
            return  # one at a time: its room comes back once it is judged
        for session in self._open.values():
            if session.reason is None and not session.judging:
                self._flag(session, "memory_cap")
                log.warning("open sessions hold more than sessions.max_bytes (%d bytes); session %s is judged early",
                            self.config.max_bytes, session.session_id)  # fmt: skip
                return

    def _forget(self, session: Session, journal: bool = True) -> None:
        found = self._open.pop(session.session_id, None) or self._judged.pop(session.session_id, None)
        if found is not None:
            self._flagged.discard(session.session_id)
            self._bytes -= session.size
            if journal:
                self._append({"op": "close", "s": session.session_id})

    # --- the journal ------------------------------------------------------------------------------

    def _append(self, entry: dict[str, Any]) -> None:
        if self._file is None:
            return
        line = orjson.dumps(entry) + b"\n"
        try:
            self._file.write(line)  # unbuffered: in the kernel before the trace is reported finished
        except OSError as exc:
            log.error("could not write the sessions journal %s: %s; a kill now would lose this change",
                      self._journal_path, exc)  # fmt: skip
            return
        self._journal_bytes += len(line)
        if self._journal_bytes > _COMPACT_ABOVE and self._journal_bytes > 2 * (self._bytes + 200 * self.sessions):
            self._compact()

    def _compact(self) -> None:
        assert self._journal_path is not None
        temp = self._journal_path.with_suffix(".tmp")
        size = 0
        with temp.open("wb") as out:
            for line in self._snapshot():
                out.write(line)
                size += len(line)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, self._journal_path)
        self._file.close()
        self._file = self._journal_path.open("ab", buffering=0)
        self._journal_bytes = size

    def _snapshot(self) -> Iterator[bytes]:
        for session in (*self._judged.values(), *self._open.values()):
            for index, turn in enumerate(session.turns):
                first = index == 0
                entry = {"op": "turn", "s": session.session_id, "t": _turn_json(turn), "n": sorted(session.scorers),
                         "p": sorted(session.passed) if first else [], "e": False,
                         "w": session.started_at if first else session.last_seen}  # fmt: skip
                yield orjson.dumps(entry) + b"\n"
            if session.reason is not None:
                yield orjson.dumps({"op": "end", "s": session.session_id, "r": session.reason}) + b"\n"
            if session.judged_turns:
                yield orjson.dumps({"op": "judged", "s": session.session_id, "k": session.judged_turns,
                                    "v": session.verdicts, "c": False}) + b"\n"  # fmt: skip

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        data = path.read_bytes()
        whole = data.rfind(b"\n") + 1
        if whole < len(data):  # a torn last line (a kill mid-write): cut, so the next line starts clean
            log.warning("sessions journal %s ends in a torn line (%d bytes); cut off", path, len(data) - whole)
            os.truncate(path, whole)
            data = data[:whole]
        for number, line in enumerate(data.split(b"\n"), 1):
            if not line:
                continue
            try:
                self._replay(orjson.loads(line))
            except Exception as exc:  # a corrupt line
                log.warning("sessions journal %s line %d unreadable (%s); skipped", path, number, exc)
        self._journal_bytes = path.stat().st_size
        if self.sessions:
            log.info("sessions journal: %d sessions (%d open) rebuilt from %s", self.sessions, len(self._open),
                     path)  # fmt: skip

    def _replay(self, entry: dict[str, Any]) -> None:
        op, session_id = entry["op"], entry["s"]
        if op == "turn":
            self._apply_turn(session_id, _turn_of(entry["t"]), entry["n"], frozenset(entry["p"]), entry["e"],
                             entry["w"])  # fmt: skip
            added = self._open.get(session_id) or self._judged[session_id]
            added.started_at = min(added.started_at, entry["w"])
            return
        session = self._open.get(session_id) or self._judged.get(session_id)
        if session is None:
            return
        if op == "end" and session_id in self._open:
            self._flag(session, entry.get("r", "ended"))
        elif op == "judged":
            session.judged_turns = entry["k"]
            session.verdicts.update(entry["v"])
            self._settle(session, entry["c"])
        elif op == "close":
            self._forget(session, journal=False)


def _turn_json(turn: Turn) -> dict[str, Any]:
    return {"id": turn.trace_id, "root": turn.root_span_id, "ts": turn.timestamp_ms, "req": turn.request,
            "resp": turn.response, "sys": turn.system,
            "tools": [[c.name, c.arguments, c.id, c.result] for c in turn.tool_calls]}  # fmt: skip


def _turn_of(data: dict[str, Any]) -> Turn:
    tools = tuple(ToolCall(name, arguments, call_id, result) for name, arguments, call_id, result in data["tools"])
    return Turn(data["id"], data["root"], data["ts"], data["req"], data["resp"], tools, data["sys"])

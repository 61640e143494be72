"""The instrumentation conventions extraction reads, registered in order of precedence.

Why a registry: each convention is a module that says how its spans are recognised and how they are read
(see record.Convention), and the order here is the one fact they share: when several conventions describe
one span, the first registered that knows a field wins. Adding a convention is one module and one
register() line below; extract.py never names one.

Why detection is compiled: it runs on every span of every scored trace. All prefixes of all conventions
form one tuple, so one pass over a span's keys with one startswith() per key finds every prefix-detected
convention; marker keys are dict lookups. The compiled form is rebuilt whenever the registry changes.

GenAI log events are not here: they are another signal, joined to spans after all are read
(genai_logs.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from tracejudge.scoring.conventions import genai, langfuse, mlflow, openinference, openllmetry
from tracejudge.scoring.conventions.record import Convention, EventReader

__all__ = ["Convention", "conventions", "detect", "event_readers", "register", "unregister"]


@dataclass(frozen=True, slots=True)
class _Compiled:
    conventions: tuple[Convention, ...]
    prefixes: tuple[str, ...]  # every convention's, for the one startswith() per key
    prefixed: tuple[tuple[int, tuple[str, ...]], ...]  # (bit, prefixes) of each prefix-detected convention
    marked: tuple[tuple[Convention, int, tuple[str, ...]], ...]  # (convention, bit, markers), in order
    events: Mapping[str, EventReader]  # span event name -> its owner's reader


def _compile(registered: tuple[Convention, ...]) -> _Compiled:
    bits = [(c, 1 << i) for i, c in enumerate(registered)]
    return _Compiled(
        conventions=registered,
        prefixes=tuple(p for c in registered for p in c.prefixes),
        prefixed=tuple((bit, c.prefixes) for c, bit in bits if c.prefixes),
        marked=tuple((c, bit, c.markers) for c, bit in bits),
        events=MappingProxyType({e: c.read_events for c in registered if c.read_events for e in c.events}),
    )


_compiled = _compile(())


def register(convention: Convention) -> None:
    """Adds `convention` after those registered, so below them in precedence. A name or span event that
    another convention already has is a programming error (ValueError)."""
    global _compiled
    if not convention.markers and not convention.prefixes:
        raise ValueError(f"convention {convention.name!r} has no markers and no prefixes: no span would follow it")
    if bool(convention.events) != (convention.read_events is not None):
        raise ValueError(f"convention {convention.name!r}: events and read_events go together")
    if any(c.name == convention.name for c in _compiled.conventions):
        raise ValueError(f"convention {convention.name!r} is registered already")
    if owned := sorted(set(convention.events) & _compiled.events.keys()):
        raise ValueError(f"convention {convention.name!r}: span events {owned} belong to another convention")
    _compiled = _compile((*_compiled.conventions, convention))


def unregister(name: str) -> None:
    """Removes the convention called `name` (KeyError if none is)."""
    global _compiled
    kept = tuple(c for c in _compiled.conventions if c.name != name)
    if len(kept) == len(_compiled.conventions):
        raise KeyError(name)
    _compiled = _compile(kept)


def conventions() -> tuple[Convention, ...]:
    """The registered conventions, in order of precedence."""
    return _compiled.conventions


def detect(attrs: Mapping[str, Any]) -> list[Convention]:
    """The conventions a span with attributes `attrs` follows, in order of precedence."""
    compiled = _compiled
    found = 0
    prefixes = compiled.prefixes
    if prefixes:
        for key in attrs:  # one pass over the keys for all prefix-detected conventions
            if key.startswith(prefixes):
                for bit, own in compiled.prefixed:
                    if key.startswith(own):
                        found |= bit
    keys = attrs.keys()
    return [c for c, bit, markers in compiled.marked if found & bit or (markers and not keys.isdisjoint(markers))]


def event_readers() -> Mapping[str, EventReader]:
    """Span event name -> the reader of the convention that owns it."""
    return _compiled.events


register(genai.CONVENTION)
register(openinference.CONVENTION)
register(openllmetry.CONVENTION)
register(mlflow.CONVENTION)
register(langfuse.CONVENTION)

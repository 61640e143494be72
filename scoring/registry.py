"""ScorerRegistry: MLflow's scorer lifecycle — register, start, update, stop, delete, get, list.

Names are unique per sidecar. `register` adds a scorer that does not run yet (sample rate 0);
`start` and `update` set its sampling; `stop` sets the rate back to 0 and keeps the registration.
Every operation returns the new spec (MLflow returns new handles). At most `max_active` scorers
run at once. State is persisted atomically under the data directory and restored at start;
scorers from the config file are (re)registered over it at every start.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import ValidationError

from .spec import ScorerSpec

log = logging.getLogger(__name__)


class RegistryError(Exception):
    """Base of the errors the control plane maps to statuses."""


class ScorerNotFound(RegistryError):
    pass


class ScorerExists(RegistryError):
    pass


class TooManyActive(RegistryError):
    pass


class ScorerRegistry:
    def __init__(
        self, state_path: Path | None, max_active: int = 20, validate: Callable[[ScorerSpec], object] | None = None
    ) -> None:
        """`state_path`: where registrations persist (None: in memory only, as in an app's own process).
        `validate` raises for a spec that cannot run (unknown builtin, unloadable code)."""
        self._path = state_path
        self._max_active = max_active
        self._validate: Callable[[ScorerSpec], object] = validate or (lambda spec: None)
        self._lock = threading.RLock()
        self._specs: dict[str, ScorerSpec] = self._load()
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def register(self, spec: ScorerSpec) -> ScorerSpec:
        with self._lock:
            if spec.name in self._specs:
                raise ScorerExists(f"a scorer named {spec.name!r} is already registered; delete it or use update")
            return self._put(spec.model_copy(update={"sample_rate": 0.0}))

    def start(self, name: str, sample_rate: float, filter_string: str | None = None) -> ScorerSpec:
        return self.update(name, sample_rate=sample_rate, filter_string=filter_string)

    def update(self, name: str, sample_rate: float | None = None, filter_string: str | None = None) -> ScorerSpec:
        with self._lock:
            current = self.get(name)
            changes: dict[str, object] = {}
            if sample_rate is not None:
                changes["sample_rate"] = sample_rate
            if filter_string is not None:
                changes["filter_string"] = filter_string
            updated = _validated(current.model_dump() | changes)
            if updated.active and not current.active and self._active_count() >= self._max_active:
                raise TooManyActive(f"{self._max_active} scorers are already active; stop one first")
            return self._put(updated)

    def stop(self, name: str) -> ScorerSpec:
        return self.update(name, sample_rate=0.0)

    def delete(self, name: str) -> None:
        with self._lock:
            self.get(name)
            del self._specs[name]
            self._save()
        self._notify()

    def get(self, name: str) -> ScorerSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ScorerNotFound(f"no scorer named {name!r}") from None

    def all(self) -> list[ScorerSpec]:
        return sorted(self._specs.values(), key=lambda spec: spec.name)

    def active(self) -> list[ScorerSpec]:
        return [spec for spec in self.all() if spec.active]

    def apply_config(self, specs: Iterable[ScorerSpec], retire: Iterable[ScorerSpec] = ()) -> None:
        """Config-file scorers win over persisted state of the same name; others are kept, except a persisted
        spec identical to one of `retire` and not in `specs`: the defaults an earlier start registered (serve
        without `scorers:`) are replaced by a config's own scorers, not kept running beside them."""
        specs = list(specs)
        with self._lock:
            named = {spec.name for spec in specs}
            for old in retire:
                if old.name not in named and self._specs.get(old.name) == old:
                    del self._specs[old.name]
            for spec in specs:
                self._validate(spec)
                self._specs[spec.name] = spec
            if self._active_count() > self._max_active:
                raise TooManyActive(f"{self._active_count()} active scorers; at most {self._max_active} may run")
            self._save()
        self._notify()

    def _put(self, spec: ScorerSpec) -> ScorerSpec:
        self._validate(spec)
        self._specs[spec.name] = spec
        self._save()
        self._notify()
        return spec

    def _active_count(self) -> int:
        return sum(spec.active for spec in self._specs.values())

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def _load(self) -> dict[str, ScorerSpec]:
        if self._path is None or not self._path.exists():
            return {}
        try:
            raw = json.loads(self._path.read_text())
            specs = [ScorerSpec.model_validate(item) for item in raw["scorers"]]
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            log.error("cannot read scorer state %s (%s); starting without it", self._path, exc)
            return {}
        return {spec.name: spec for spec in specs}

    def _save(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_suffix(".tmp")
        body = {"scorers": [spec.model_dump(mode="json", exclude_defaults=True) for spec in self.all()]}
        temporary.write_text(json.dumps(body, indent=1))
        os.replace(temporary, self._path)


def _validated(raw: dict[str, object]) -> ScorerSpec:
    try:
        return ScorerSpec.model_validate(raw)
    except ValidationError as exc:
        raise RegistryError(str(exc)) from exc

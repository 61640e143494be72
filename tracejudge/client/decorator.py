"""MLflow's `@scorer`, the only one tracejudge has: it marks a code scorer, which never travels over the network.

The sidecar loads code scorers from its config file (`code: "module:function"`) as plain callables; this
decorator leaves the function as it is (same object, same signature) and gives it `register`, `start`,
`update` and `stop` that say so, in the server's words, instead of sending code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tracejudge.schema import code_over_network

from .errors import PermissionDeniedError

F = TypeVar("F", bound=Callable[..., Any])


def scorer(function: Any = None, *, name: str | None = None) -> Any:
    """Mark a function as a scorer; usable bare (`@scorer`) or with a name (`@scorer(name="x")`)."""

    def mark(target: F) -> F:
        default_name = name or target.__name__
        target.__tracejudge_scorer_name__ = default_name  # type: ignore[attr-defined]

        def refuse(*_args: Any, **kwargs: Any) -> Any:
            called = kwargs.get("name") or default_name
            if target.__module__ == "__main__":
                message = code_over_network(called) + " (move the function out of __main__ into an importable module)"
            else:
                message = code_over_network(called, f"{target.__module__}:{target.__name__}")
            raise PermissionDeniedError(message)

        for method in ("register", "start", "update", "stop"):
            setattr(target, method, refuse)
        return target

    return mark(function) if function is not None else mark

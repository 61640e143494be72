"""The control plane: the services tracejudge serves beyond OTLP, bound to their RPCs, behind one access rule.

A service object serves the proto service it is given for when each RPC is a method of the same name in
snake_case (RegisterScorer -> register_scorer) taking the request message and returning the response; the
binding is checked here, once, so a missing method stops start-up instead of failing its first call. Both
adapters (grpc_adapter, http_adapter) serve every bound method from these bindings and the schema, so adding
an RPC takes its messages and `google.api.http` rule in the .proto and one method on the service object.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from tracejudge.schema import Method, Service

from .service import Access, ControlError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Binding:
    """One RPC and the service object's method that serves it."""

    method: Method
    serve: Callable[[Message], Message]


class ControlPlane:
    """Service objects by proto service name, and the calls into them.

    `token`, `listen` and `cert_names` decide who may call at all (service.Access): the same rule for every
    service.
    """

    def __init__(
        self,
        services: Mapping[Service, object],
        token: str | None = None,
        listen: Iterable[str | None] = (),
        cert_names: Iterable[str] = (),
    ) -> None:
        self._access = Access(token, listen, cert_names)
        self.services: dict[str, tuple[Binding, ...]] = {
            service.name: bind(service, implementation) for service, implementation in services.items()
        }

    @property
    def bindings(self) -> list[Binding]:
        return [binding for bindings in self.services.values() for binding in bindings]

    def admit(self, authorization: str | None, peer_names: frozenset[str] = frozenset()) -> ControlError | None:
        """None when a caller sending this `authorization` header, with a verified client certificate of
        these `peer_names` (if any), may call; else the refusal."""
        return self._access.check(authorization, peer_names)

    def call(
        self,
        binding: Binding,
        request: Message,
        authorization: str | None,
        peer_names: frozenset[str] = frozenset(),
    ) -> Message | ControlError:
        """The response, or the refusal to answer with: not admitted, refused by the service, or INTERNAL."""
        refused = self.admit(authorization, peer_names)
        if refused is not None:
            return refused
        try:
            return binding.serve(request)
        except ControlError as exc:
            return exc
        except Exception:
            log.exception("control plane %s failed", binding.method.name)
            return ControlError("INTERNAL", f"{binding.method.name} failed inside tracejudge; see its log")


def bind(service: Service, implementation: object) -> tuple[Binding, ...]:
    """Each RPC of `service` bound to the method of its snake_case name; TypeError naming any that is missing."""
    missing = [m.python_name for m in service.methods if not callable(getattr(implementation, m.python_name, None))]
    if missing:
        raise TypeError(f"{type(implementation).__name__} cannot serve {service.name}: it has no {', '.join(missing)}")
    return tuple(Binding(method, getattr(implementation, method.python_name)) for method in service.methods)

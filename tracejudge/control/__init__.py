"""tracejudge's control plane: the services it serves beyond OTLP, on the OTLP ports.

    service.py        ScorerService, SessionService, AssessmentService, BackfillService (transport-free),
                      ControlError,
                      Access (bearer token, loopback rule)
    convert.py        ScorerSpec <-> the Scorer message
    plane.py          ControlPlane: service objects bound to their RPCs, one access rule for all
    grpc_adapter.py   the plane over gRPC (GrpcReceiver's `handlers`)
    http_adapter.py   the plane as HTTP/JSON from each RPC's google.api.http rule (HttpReceiver's `routes`)

Both adapters are generic, driven by tracejudge.schema: an RPC is added with its messages and HTTP rule in
the .proto and one method on the service object.
"""

from .grpc_adapter import grpc_handlers
from .http_adapter import http_routes
from .plane import ControlPlane
from .service import AssessmentService, BackfillService, ControlError, ScorerService, SessionService

__all__ = [
    "AssessmentService",
    "BackfillService",
    "ControlError",
    "ControlPlane",
    "ScorerService",
    "SessionService",
    "grpc_handlers",
    "http_routes",
]

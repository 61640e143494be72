"""The users' client for tracejudge's control plane; `tracejudge.scorers` is its public face (MLflow's API).

    errors.py           ControlPlaneError and one subclass per status worth catching
    transport.py        the Transport protocol, endpoint and token settings
    grpc_transport.py   calls over gRPC        } both generic: paths, types and HTTP rules
    http_transport.py   calls as HTTP/JSON     } come from tracejudge.schema
    types.py            ScorerStatus, ScorerSamplingConfig, feedback value types
    client.py           ScorerClient, the Scorer handle, list/get/delete
    builtin_scorers.py  Safety, LatencyUnder, ... from the schema's catalogue; Guidelines; make_judge
    decorator.py        @scorer

Imports only tracejudge.proto, tracejudge.schema and tracejudge.model, plus grpc and the stdlib: nothing of
the server. `builtin_scorers` is imported here so that handles the client hands back are of the builtin classes
(Safety, not Scorer) whichever of its modules a caller imported.
"""

from . import builtin_scorers as builtin_scorers

"""Manage a running sidecar's scorers from Python, as MLflow users do with ``mlflow.genai.scorers``.

    from tracejudge.scorers import Safety, Guidelines, ScorerSamplingConfig, list_scorers

    safety = Safety().register(name="safety")            # registered, not running yet
    safety = safety.start(sampling_config=ScorerSamplingConfig(sample_rate=1.0,
                                                               filter_string="attributes.status = 'OK'"))
    safety = safety.update(sampling_config=ScorerSamplingConfig(sample_rate=0.5))
    safety = safety.stop()                               # still registered, sample rate 0

Every lifecycle call returns a NEW handle carrying the sidecar's state (``.name``, ``.sample_rate``,
``.filter_string``, ``.status``); the object it was called on is left as it was, so reassign.

The sidecar is reached at ``TRACEJUDGE_ENDPOINT``: ``host:port`` or ``grpc://host:port`` (default
127.0.0.1:4317, the OTLP/gRPC listener), ``grpcs://host:port`` over TLS, or ``http(s)://host:port`` for
the HTTP/JSON API on the OTLP/HTTP listener. ``TRACEJUDGE_TOKEN`` is sent as a bearer token when set;
``TRACEJUDGE_CA_FILE`` verifies a TLS sidecar, ``TRACEJUDGE_CERT_FILE`` + ``TRACEJUDGE_KEY_FILE`` are the client
certificate when it requires mutual TLS (or ``ScorerClient(ca_file=, cert_file=, key_file=)``).

Code scorers (``@scorer`` functions) are never sent over the network: name them in the config file's
``scorers:`` as ``code: "module:function"``; once loaded they can be started and stopped from here.

This module is the public face; the client lives in tracejudge/client/ (see its __init__ for the layout).
"""

from __future__ import annotations

from tracejudge.client.assessments import Assessment, AssessmentSource, AssessmentSourceType
from tracejudge.client.backfill import BackfillJob, BackfillScorerConfig
from tracejudge.client.builtin_scorers import (
    Completeness,
    ConversationalGuidelines,
    ConversationalRoleAdherence,
    ConversationalSafety,
    ConversationalToolCallEfficiency,
    ConversationCompleteness,
    Correctness,
    Equivalence,
    ExpectationsGuidelines,
    Fluency,
    Guidelines,
    KnowledgeRetention,
    LatencyUnder,
    NoError,
    NonEmptyResponse,
    NoPii,
    RegexMatch,
    RelevanceToQuery,
    RetrievalGroundedness,
    RetrievalRelevance,
    RetrievalSufficiency,
    Safety,
    Summarization,
    TokenBudget,
    ToolCallCorrectness,
    ToolCallEfficiency,
    UserFrustration,
    ValidJson,
    make_judge,
)
from tracejudge.client.client import (
    Scorer,
    ScorerClient,
    backfill_scorers,
    delete_scorer,
    end_session,
    get_assessments,
    get_scorer,
    list_scorers,
    log_expectation,
    log_feedback,
    override_feedback,
)
from tracejudge.client.decorator import scorer
from tracejudge.client.errors import ControlPlaneError
from tracejudge.client.errors import InvalidScorerError as InvalidScorerError
from tracejudge.client.errors import PermissionDeniedError as PermissionDeniedError
from tracejudge.client.errors import ScorerExistsError as ScorerExistsError
from tracejudge.client.errors import ScorerNotFoundError as ScorerNotFoundError
from tracejudge.client.errors import TooManyActiveError as TooManyActiveError
from tracejudge.client.errors import UnauthenticatedError as UnauthenticatedError
from tracejudge.client.errors import UnavailableError as UnavailableError
from tracejudge.client.transport import DEFAULT_ENDPOINT as DEFAULT_ENDPOINT
from tracejudge.client.transport import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from tracejudge.client.transport import ENDPOINT_ENV as ENDPOINT_ENV
from tracejudge.client.transport import TOKEN_ENV as TOKEN_ENV
from tracejudge.client.types import ScorerSamplingConfig, ScorerStatus
from tracejudge.model import Feedback
from tracejudge.schema import VALUE_TYPES

VALUE_TYPE_NAMES = VALUE_TYPES  # the feedback value types, by the name this module gave them first

# Also importable from here, as before, though not in __all__: the error classes worth catching and the
# endpoint settings (the `X as X` imports above), and VALUE_TYPE_NAMES.
__all__ = [
    "Assessment",
    "AssessmentSource",
    "AssessmentSourceType",
    "BackfillJob",
    "BackfillScorerConfig",
    "Completeness",
    "ControlPlaneError",
    "ConversationCompleteness",
    "ConversationalGuidelines",
    "ConversationalRoleAdherence",
    "ConversationalSafety",
    "ConversationalToolCallEfficiency",
    "Correctness",
    "Equivalence",
    "ExpectationsGuidelines",
    "Feedback",
    "Fluency",
    "Guidelines",
    "KnowledgeRetention",
    "LatencyUnder",
    "NoError",
    "NoPii",
    "NonEmptyResponse",
    "RegexMatch",
    "RelevanceToQuery",
    "RetrievalGroundedness",
    "RetrievalRelevance",
    "RetrievalSufficiency",
    "Safety",
    "Scorer",
    "ScorerClient",
    "ScorerSamplingConfig",
    "ScorerStatus",
    "Summarization",
    "TokenBudget",
    "ToolCallCorrectness",
    "ToolCallEfficiency",
    "UserFrustration",
    "ValidJson",
    "backfill_scorers",
    "delete_scorer",
    "end_session",
    "get_assessments",
    "get_scorer",
    "list_scorers",
    "log_expectation",
    "log_feedback",
    "make_judge",
    "override_feedback",
    "scorer",
]

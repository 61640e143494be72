from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScorerStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORER_STATUS_UNSPECIFIED: _ClassVar[ScorerStatus]
    SCORER_STATUS_STOPPED: _ClassVar[ScorerStatus]
    SCORER_STATUS_STARTED: _ClassVar[ScorerStatus]
SCORER_STATUS_UNSPECIFIED: ScorerStatus
SCORER_STATUS_STOPPED: ScorerStatus
SCORER_STATUS_STARTED: ScorerStatus

class BackfillScorerConfig(_message.Message):
    __slots__ = ("scorer", "sample_rate")
    SCORER_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    scorer: str
    sample_rate: float
    def __init__(self, scorer: _Optional[str] = ..., sample_rate: _Optional[float] = ...) -> None: ...

class StartBackfillRequest(_message.Message):
    __slots__ = ("scorers", "start_time", "end_time", "rescore", "skipped_only", "dry_run")
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    RESCORE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_ONLY_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    scorers: _containers.RepeatedCompositeFieldContainer[BackfillScorerConfig]
    start_time: str
    end_time: str
    rescore: bool
    skipped_only: bool
    dry_run: bool
    def __init__(self, scorers: _Optional[_Iterable[_Union[BackfillScorerConfig, _Mapping]]] = ..., start_time: _Optional[str] = ..., end_time: _Optional[str] = ..., rescore: bool = ..., skipped_only: bool = ..., dry_run: bool = ...) -> None: ...

class GetBackfillRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListBackfillsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBackfillsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[BackfillJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[BackfillJob, _Mapping]]] = ...) -> None: ...

class CancelBackfillRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class BackfillEstimate(_message.Message):
    __slots__ = ("traces", "pairs", "already_scored", "judge_calls", "tokens", "cost", "budget", "tokens_from_prompts")
    class PairsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class AlreadyScoredEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TRACES_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_SCORED_FIELD_NUMBER: _ClassVar[int]
    JUDGE_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FROM_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    traces: int
    pairs: _containers.ScalarMap[str, int]
    already_scored: _containers.ScalarMap[str, int]
    judge_calls: int
    tokens: int
    cost: float
    budget: str
    tokens_from_prompts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, traces: _Optional[int] = ..., pairs: _Optional[_Mapping[str, int]] = ..., already_scored: _Optional[_Mapping[str, int]] = ..., judge_calls: _Optional[int] = ..., tokens: _Optional[int] = ..., cost: _Optional[float] = ..., budget: _Optional[str] = ..., tokens_from_prompts: _Optional[_Iterable[str]] = ...) -> None: ...

class BackfillJob(_message.Message):
    __slots__ = ("job_id", "status", "scorers", "start_time", "end_time", "rescore", "skipped_only", "traces", "total_traces", "assessments", "skipped", "input_tokens", "output_tokens", "error", "created_at", "finished_at", "estimate", "cost")
    class ScorersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class AssessmentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class SkippedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    RESCORE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_ONLY_FIELD_NUMBER: _ClassVar[int]
    TRACES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TRACES_FIELD_NUMBER: _ClassVar[int]
    ASSESSMENTS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    status: str
    scorers: _containers.ScalarMap[str, float]
    start_time: str
    end_time: str
    rescore: bool
    skipped_only: bool
    traces: int
    total_traces: int
    assessments: _containers.ScalarMap[str, int]
    skipped: _containers.ScalarMap[str, int]
    input_tokens: int
    output_tokens: int
    error: str
    created_at: float
    finished_at: float
    estimate: BackfillEstimate
    cost: float
    def __init__(self, job_id: _Optional[str] = ..., status: _Optional[str] = ..., scorers: _Optional[_Mapping[str, float]] = ..., start_time: _Optional[str] = ..., end_time: _Optional[str] = ..., rescore: bool = ..., skipped_only: bool = ..., traces: _Optional[int] = ..., total_traces: _Optional[int] = ..., assessments: _Optional[_Mapping[str, int]] = ..., skipped: _Optional[_Mapping[str, int]] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., error: _Optional[str] = ..., created_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., estimate: _Optional[_Union[BackfillEstimate, _Mapping]] = ..., cost: _Optional[float] = ...) -> None: ...

class AssessmentSource(_message.Message):
    __slots__ = ("source_type", "source_id")
    SOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    source_type: str
    source_id: str
    def __init__(self, source_type: _Optional[str] = ..., source_id: _Optional[str] = ...) -> None: ...

class LogAssessmentRequest(_message.Message):
    __slots__ = ("trace_id", "name", "value", "source", "rationale", "span_id", "expectation", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTATION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    name: str
    value: _struct_pb2.Value
    source: AssessmentSource
    rationale: str
    span_id: str
    expectation: bool
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, trace_id: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., source: _Optional[_Union[AssessmentSource, _Mapping]] = ..., rationale: _Optional[str] = ..., span_id: _Optional[str] = ..., expectation: bool = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class OverrideFeedbackRequest(_message.Message):
    __slots__ = ("trace_id", "assessment_id", "value", "source", "rationale", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    ASSESSMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    assessment_id: str
    value: _struct_pb2.Value
    source: AssessmentSource
    rationale: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, trace_id: _Optional[str] = ..., assessment_id: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., source: _Optional[_Union[AssessmentSource, _Mapping]] = ..., rationale: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetAssessmentsRequest(_message.Message):
    __slots__ = ("trace_id",)
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    def __init__(self, trace_id: _Optional[str] = ...) -> None: ...

class GetAssessmentsResponse(_message.Message):
    __slots__ = ("assessments",)
    ASSESSMENTS_FIELD_NUMBER: _ClassVar[int]
    assessments: _containers.RepeatedCompositeFieldContainer[AssessmentRecord]
    def __init__(self, assessments: _Optional[_Iterable[_Union[AssessmentRecord, _Mapping]]] = ...) -> None: ...

class AssessmentRecord(_message.Message):
    __slots__ = ("assessment_id", "trace_id", "span_id", "name", "value", "source", "rationale", "expectation", "metadata", "valid", "overrides", "timestamp_unix_nano", "error", "scorer_version")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ASSESSMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPAN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    EXPECTATION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    OVERRIDES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SCORER_VERSION_FIELD_NUMBER: _ClassVar[int]
    assessment_id: str
    trace_id: str
    span_id: str
    name: str
    value: _struct_pb2.Value
    source: AssessmentSource
    rationale: str
    expectation: bool
    metadata: _containers.ScalarMap[str, str]
    valid: bool
    overrides: str
    timestamp_unix_nano: int
    error: str
    scorer_version: int
    def __init__(self, assessment_id: _Optional[str] = ..., trace_id: _Optional[str] = ..., span_id: _Optional[str] = ..., name: _Optional[str] = ..., value: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., source: _Optional[_Union[AssessmentSource, _Mapping]] = ..., rationale: _Optional[str] = ..., expectation: bool = ..., metadata: _Optional[_Mapping[str, str]] = ..., valid: bool = ..., overrides: _Optional[str] = ..., timestamp_unix_nano: _Optional[int] = ..., error: _Optional[str] = ..., scorer_version: _Optional[int] = ...) -> None: ...

class EndSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class EndSessionResponse(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class Scorer(_message.Message):
    __slots__ = ("name", "builtin", "guidelines", "instructions", "code", "feedback_value_type", "feedback_categories", "model", "params", "sample_rate", "filter_string", "version", "status", "target")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    GUIDELINES_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_VALUE_TYPE_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    FILTER_STRING_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    builtin: str
    guidelines: Guidelines
    instructions: str
    code: str
    feedback_value_type: str
    feedback_categories: _containers.RepeatedScalarFieldContainer[str]
    model: str
    params: _struct_pb2.Struct
    sample_rate: float
    filter_string: str
    version: int
    status: ScorerStatus
    target: ScorerTarget
    def __init__(self, name: _Optional[str] = ..., builtin: _Optional[str] = ..., guidelines: _Optional[_Union[Guidelines, _Mapping]] = ..., instructions: _Optional[str] = ..., code: _Optional[str] = ..., feedback_value_type: _Optional[str] = ..., feedback_categories: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., sample_rate: _Optional[float] = ..., filter_string: _Optional[str] = ..., version: _Optional[int] = ..., status: _Optional[_Union[ScorerStatus, str]] = ..., target: _Optional[_Union[ScorerTarget, _Mapping]] = ...) -> None: ...

class ScorerTarget(_message.Message):
    __slots__ = ("kind", "span_type", "name", "filter_string", "max_spans_per_trace")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SPAN_TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILTER_STRING_FIELD_NUMBER: _ClassVar[int]
    MAX_SPANS_PER_TRACE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    span_type: str
    name: str
    filter_string: str
    max_spans_per_trace: int
    def __init__(self, kind: _Optional[str] = ..., span_type: _Optional[str] = ..., name: _Optional[str] = ..., filter_string: _Optional[str] = ..., max_spans_per_trace: _Optional[int] = ...) -> None: ...

class Guidelines(_message.Message):
    __slots__ = ("guidelines",)
    GUIDELINES_FIELD_NUMBER: _ClassVar[int]
    guidelines: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, guidelines: _Optional[_Iterable[str]] = ...) -> None: ...

class SamplingConfig(_message.Message):
    __slots__ = ("sample_rate", "filter_string")
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    FILTER_STRING_FIELD_NUMBER: _ClassVar[int]
    sample_rate: float
    filter_string: str
    def __init__(self, sample_rate: _Optional[float] = ..., filter_string: _Optional[str] = ...) -> None: ...

class RegisterScorerRequest(_message.Message):
    __slots__ = ("scorer",)
    SCORER_FIELD_NUMBER: _ClassVar[int]
    scorer: Scorer
    def __init__(self, scorer: _Optional[_Union[Scorer, _Mapping]] = ...) -> None: ...

class StartScorerRequest(_message.Message):
    __slots__ = ("name", "sampling_config")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    sampling_config: SamplingConfig
    def __init__(self, name: _Optional[str] = ..., sampling_config: _Optional[_Union[SamplingConfig, _Mapping]] = ...) -> None: ...

class UpdateScorerRequest(_message.Message):
    __slots__ = ("name", "sampling_config")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    sampling_config: SamplingConfig
    def __init__(self, name: _Optional[str] = ..., sampling_config: _Optional[_Union[SamplingConfig, _Mapping]] = ...) -> None: ...

class StopScorerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteScorerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetScorerRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListScorersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListScorersResponse(_message.Message):
    __slots__ = ("scorers",)
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    scorers: _containers.RepeatedCompositeFieldContainer[Scorer]
    def __init__(self, scorers: _Optional[_Iterable[_Union[Scorer, _Mapping]]] = ...) -> None: ...

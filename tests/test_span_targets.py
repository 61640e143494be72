"""Span targets: scorers that judge spans of a trace, each on its own, with verdicts parented to those spans."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from instrumented_apps import mlflow_env, run_app
from mock_openai import MockOpenAI
from pydantic import ValidationError
from test_scoring_e2e import evaluation_spans

from tracejudge.model import BufferedSpan, CompletionReason, Trace
from tracejudge.scorers import Scorer, get_scorer
from tracejudge.scoring.extract import extract_with_spans
from tracejudge.scoring.sampling import threshold
from tracejudge.scoring.span_targets import span_randomness, span_target_views
from tracejudge.scoring.spec import ScorerSpec, SpanTarget
from tracejudge.synthetic import genai_trace_spans
from tracejudge.testing import wait_until

from archive_reader import query
from otlp_peers import GrpcSink

RETRIEVING_APP = """
import mlflow

@mlflow.trace(span_type="RETRIEVER")
def retrieve(query):
    return [{"page_content": f"Policy text about {query}.", "metadata": {"doc_uri": f"kb://{query}"}}]

@mlflow.trace(span_type="TOOL")
def lookup_order(order_id):
    return {"order_id": order_id, "status": "delivered damaged"}

@mlflow.trace(span_type="CHAIN")
def answer(question):
    retrieve("refund windows")
    retrieve("damaged items")
    lookup_order("A-1042")
    return "Damaged items are refunded within 30 days."

answer("Is a damaged kettle refunded?")
"""


def test_each_retrieval_and_tool_span_gets_its_own_verdict(
    tmp_path: Path, grpc_sink: GrpcSink, sidecar_factory, monkeypatch
):
    with MockOpenAI() as judge:
        config = {
            "assembler": {"trace_idle": "200ms"},
            "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY"}},
            "scorers": [
                {"name": "doc_relevance", "builtin": "RetrievalRelevance", "sample_rate": 1.0,
                 "target": {"span_type": "RETRIEVER"}},
                {"name": "first_doc", "builtin": "RetrievalRelevance", "sample_rate": 1.0,
                 "target": {"name": "retr*", "max_spans_per_trace": 1}},
                {"name": "tool_ok", "builtin": "ToolCallCorrectness", "sample_rate": 1.0,
                 "target": {"filter_string": "span.type = 'TOOL'"}},
            ],
        }  # fmt: skip
        sidecar = sidecar_factory([grpc_sink.url], config, name="spans")
        monkeypatch.setenv("TRACEJUDGE_ENDPOINT", sidecar.grpc_target)
        assert get_scorer("doc_relevance").target == {"span_type": "RETRIEVER", "max_spans_per_trace": 10}
        registered = Scorer(name="replies", builtin="Safety", target={"span_type": "LLM", "name": "chat *"}).register()
        assert get_scorer("replies").target == registered.target == {"span_type": "LLM", "name": "chat *",
                                                                      "max_spans_per_trace": 10}  # fmt: skip
        assert get_scorer("tool_ok").to_dict()["target"] == {"filter_string": "span.type = 'TOOL'",
                                                             "max_spans_per_trace": 10}  # fmt: skip
        run_app(tmp_path / "app", RETRIEVING_APP, sidecar.grpc_target, env=mlflow_env(sidecar.grpc_target, tmp_path))
        assert wait_until(lambda: len(evaluation_spans(grpc_sink)) == 4, timeout=30), sidecar.log_tail()
        time.sleep(1)  # nothing more comes
        prompts = [r.user_text for r in judge.chat_requests()]
        skipped = sidecar.metric("tracejudge_scoring_skipped_total", scorer="first_doc", reason="max_spans")
        assert sidecar.stop() == 0

    spans = {s.span_id: s for s in grpc_sink.received.spans() if not s.name.startswith("evaluation ")}
    retrievals = sorted((s for s in spans.values() if s.name == "retrieve"), key=lambda s: s.start_time_unix_nano)
    [tool] = [s for s in spans.values() if s.name == "lookup_order"]
    verdicts = evaluation_spans(grpc_sink)
    assert len(verdicts) == 4
    parents = {name: sorted(v.parent_span_id for v in verdicts if v.name == f"evaluation {name}")
               for name in ("doc_relevance", "first_doc", "tool_ok")}  # fmt: skip
    assert parents == {"doc_relevance": sorted(s.span_id for s in retrievals), "first_doc": [retrievals[0].span_id],
                       "tool_ok": [tool.span_id]}  # fmt: skip
    assert all(v.trace_id == retrievals[0].trace_id for v in verdicts)

    # Each retrieval judge saw that span's documents and query only.
    retrieval_prompts = [p for p in prompts if "Policy text about" in p]
    assert len(retrieval_prompts) == 3
    assert sum("Policy text about refund windows." in p for p in retrieval_prompts) == 2
    assert sum("Policy text about damaged items." in p for p in retrieval_prompts) == 1
    assert not any("refund windows." in p and "damaged items." in p for p in retrieval_prompts)
    [tool_prompt] = [p for p in prompts if "lookup_order" in p]
    assert "A-1042" in tool_prompt and "delivered damaged" in tool_prompt
    assert "Is a damaged kettle refunded?" in tool_prompt  # a tool call is judged against the user's question

    # The cap: one retrieval judged by first_doc, the other recorded as skipped with its span id.
    assert skipped == 1
    archive = sidecar.data_dir / "archive"
    rows = query(archive, "assessments", "SELECT name, span_id FROM t ORDER BY name")
    assert sorted(rows) == sorted(
        [("doc_relevance", s.span_id.hex()) for s in retrievals]
        + [("first_doc", retrievals[0].span_id.hex()), ("tool_ok", tool.span_id.hex())]
    )
    cut = query(archive, "skipped", "SELECT span_id, scorers, reason FROM t")
    assert [(row[0], list(row[1]), row[2]) for row in cut] == [(retrievals[1].span_id.hex(), ["first_doc"],
                                                                "max_spans")]  # fmt: skip


def synthetic_trace() -> Trace:
    spans = genai_trace_spans(os.urandom(16), time.time_ns())
    buffered = [BufferedSpan(s.span_id, s.parent_span_id, s.start_time_unix_nano, s.end_time_unix_nano,
                             s.status.code, not s.parent_span_id, s.SerializeToString(), b"", b"")
                for s in spans]  # fmt: skip
    return Trace(spans[0].trace_id, buffered, [], 0.0, 0.0, CompletionReason.ROOT_IDLE, True)


def test_span_views_match_by_type_name_and_filter_and_carry_that_span_alone() -> None:
    view, records = extract_with_spans(synthetic_trace())
    llm, _ = span_target_views(view, records, SpanTarget(span_type="LLM"), 1.0)
    assert [v.root_span_id for v in llm] == [r.span_id for r in sorted(records.values(), key=lambda r: r.start)
                                              if r.span.name.startswith("chat")]  # fmt: skip
    assert all(len(v.spans) == 1 and v.spans[0].span_id == v.root_span_id and v.llm_calls for v in llm)
    assert [v.input_tokens for v in llm] == [120, 410]
    named, _ = span_target_views(view, records, SpanTarget(name="execute_tool *"), 1.0)
    assert [v.tool_calls[0].name for v in named] == ["lookup_order"]
    assert named[0].request_text == view.request_text  # the user's question
    filtered, _ = span_target_views(view, records, SpanTarget(filter_string="span.name = 'retrieval docs'"), 1.0)
    assert [v.spans[0].name for v in filtered] == ["retrieval docs"]
    capped, cut = span_target_views(view, records, SpanTarget(span_type="LLM", max_spans_per_trace=1), 1.0)
    assert [v.root_span_id for v in capped] + cut == [v.root_span_id for v in llm]


def test_span_sampling_is_consistent_and_nested_per_trace_and_span() -> None:
    pairs = [(os.urandom(16).hex(), os.urandom(8).hex()) for _ in range(4000)]
    at = {rate: {p for p in pairs if span_randomness(*p) >= threshold(rate)} for rate in (0.2, 0.6)}
    assert at[0.2] <= at[0.6]
    assert 0.17 < len(at[0.2]) / len(pairs) < 0.23
    trace_id = pairs[0][0]  # the spans of one trace are sampled independently of each other
    spans = {os.urandom(8).hex() for _ in range(2000)}
    share = sum(span_randomness(trace_id, s) >= threshold(0.5) for s in spans) / len(spans)
    assert 0.45 < share < 0.55


def test_a_span_target_is_validated() -> None:
    assert ScorerSpec(name="d", builtin="RetrievalRelevance", target={"span_type": "retriever"}).target_kind == "span"
    with pytest.raises(ValidationError, match="unknown span_type 'spoon'"):
        ScorerSpec(name="d", builtin="Safety", target={"span_type": "spoon"})
    with pytest.raises(ValidationError, match="needs at least one of span_type, name, filter_string"):
        ScorerSpec(name="d", builtin="Safety", target={"max_spans_per_trace": 3})
    with pytest.raises(ValidationError, match="judges whole conversations"):
        ScorerSpec(name="f", builtin="UserFrustration", target={"span_type": "LLM"})

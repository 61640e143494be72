"""Conversations: real instrumented chat apps (OTel GenAI, OpenInference, OpenLLMetry) holding two-turn
conversations, judged by multi-turn scorers in a real sidecar once each conversation is over."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest
from click.testing import CliRunner
from instrumented_apps import run_conversations
from mock_openai import MockOpenAI
from pydantic import ValidationError
from test_scoring_e2e import evaluation_spans, event_attributes

from tracejudge.cli import main
from tracejudge.otlp import SESSION_KEYS, any_value
from tracejudge.scorers import ScorerNotFoundError, end_session
from tracejudge.scoring.code import CodeScorerError, bind_arguments, load_function
from tracejudge.scoring.config import SessionsConfig
from tracejudge.scoring.sampling import session_randomness, threshold
from tracejudge.scoring.sessions import SessionStore
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.scoring.view import SessionView, Turn
from tracejudge.testing import SidecarProcess, wait_until

from archive_reader import query
from otlp_peers import GrpcSink

CONVENTIONS = ("otel-genai", "openinference", "openllmetry")
UNHAPPY = "That is useless, you ignored my question twice. VERDICT:unresolved"


def conversations(convention: str) -> dict[str, list[str]]:
    """Two conversations of two turns; in the second the user is unhappy (the mock judge's marker)."""
    return {
        f"{convention}-happy": [f"[{convention}-happy] What is the refund window?", "Thanks, and for damaged items?"],
        f"{convention}-unhappy": [f"[{convention}-unhappy] Can I return shoes?", UNHAPPY],
    }


def session_config(judge: MockOpenAI, idle: str) -> dict:
    return {
        "assembler": {"trace_idle": "200ms"},
        "sessions": {"idle": idle},
        "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY"}},
        "scorers": [
            {"name": "frustration", "builtin": "UserFrustration", "sample_rate": 1.0},
            {"name": "complete", "builtin": "ConversationCompleteness", "sample_rate": 1.0},
            {"name": "convo_tone", "instructions": "Is the assistant polite in {{ conversation }}?",
             "feedback_value_type": "bool", "sample_rate": 1.0},
        ],
    }  # fmt: skip


def turns_by_session(sink: GrpcSink) -> dict[str, list[tuple[int, bytes, bytes]]]:
    """session id -> its traces as (root start, trace id, root span id), in order, read from the forwarded spans."""
    sessions: dict[bytes, str] = {}
    roots: dict[bytes, tuple[int, bytes]] = {}
    for span in sink.received.spans():
        if span.name.startswith("evaluation "):
            continue
        for attribute in span.attributes:
            if attribute.key in SESSION_KEYS:
                sessions[span.trace_id] = any_value(attribute.value)
        if not span.parent_span_id:
            roots[span.trace_id] = (span.start_time_unix_nano, span.span_id)
    found: dict[str, list[tuple[int, bytes, bytes]]] = defaultdict(list)
    for trace_id, session_id in sessions.items():
        start, root = roots[trace_id]
        found[session_id].append((start, trace_id, root))
    return {session_id: sorted(turns) for session_id, turns in found.items()}


def verdicts(sink: GrpcSink) -> list[tuple[str, str, bytes, bytes, dict]]:
    """(scorer, session id, trace id, parent span id, event attributes) of every evaluation span."""
    found = []
    for span in evaluation_spans(sink):
        attributes = {a.key: any_value(a.value) for a in span.attributes}
        found.append((span.name.removeprefix("evaluation "), attributes.get("session.id"), span.trace_id,
                      span.parent_span_id, {**attributes, **event_attributes(span)}))  # fmt: skip
    return found


def test_each_conversation_gets_one_verdict_per_session_judge_on_its_first_trace(
    tmp_path: Path, grpc_sink: GrpcSink, sidecar_factory
):
    with MockOpenAI() as app_model, MockOpenAI() as judge:
        sidecar = sidecar_factory([grpc_sink.url], session_config(judge, "2s"), name="sessions")
        for convention in CONVENTIONS:
            run_conversations(tmp_path / convention, convention, conversations(convention), sidecar.grpc_target,
                              app_model.base_url)  # fmt: skip
        assert wait_until(lambda: len(verdicts(grpc_sink)) == 18, timeout=60), sidecar.log_tail()
        time.sleep(3)  # past another idle period: nothing is judged twice
        found = verdicts(grpc_sink)
        assert len(found) == 18
        sessions = turns_by_session(grpc_sink)
        assert sorted(sessions) == sorted(s for c in CONVENTIONS for s in conversations(c))
        assert all(len(turns) == 2 for turns in sessions.values())
        for scorer, session_id, trace_id, parent, _ in found:
            _, first_trace, first_root = sessions[session_id][0]
            assert (trace_id, parent) == (first_trace, first_root), (scorer, session_id)
        assert sorted((scorer, session_id) for scorer, session_id, *_ in found) == sorted(
            (scorer, session_id) for scorer in ("frustration", "complete", "convo_tone") for session_id in sessions
        )
        frustration = {session_id: attrs["gen_ai.evaluation.score.label"]
                       for scorer, session_id, _, _, attrs in found if scorer == "frustration"}  # fmt: skip
        assert frustration == {s: "unresolved" if s.endswith("-unhappy") else "none" for s in sessions}

        # The judge was shown every turn, in order, once per conversation and scorer.
        for session_id, texts in ((s, t) for c in CONVENTIONS for s, t in conversations(c).items()):
            prompts = [r.user_text for r in judge.chat_requests() if texts[0] in r.user_text]
            assert len(prompts) == 3, session_id
            assert all(texts[1] in p and p.index(texts[0]) < p.index(texts[1]) for p in prompts)

        # A third turn after the verdict re-opens the conversation: judged again, superseding the first verdicts.
        first_ids = {(scorer, s): attrs["tracejudge.assessment.id"] for scorer, s, _, _, attrs in found}
        regrown = "otel-genai-happy"
        run_conversations(tmp_path / "third", "otel-genai", {regrown: ["One more thing: gift cards?"]},
                          sidecar.grpc_target, app_model.base_url)  # fmt: skip
        assert wait_until(lambda: len(verdicts(grpc_sink)) == 21, timeout=30), sidecar.log_tail()
        later = verdicts(grpc_sink)[18:]
        assert {(scorer, s) for scorer, s, *_ in later} == {(n, regrown) for n in ("frustration", "complete",
                                                                                   "convo_tone")}  # fmt: skip
        for scorer, session_id, trace_id, parent, attrs in later:
            assert attrs["tracejudge.assessment.overrides"] == first_ids[(scorer, session_id)]
            assert (trace_id, parent) == sessions[session_id][0][1:]
        third_prompt = next(r.user_text for r in judge.chat_requests() if "gift cards" in r.user_text)
        assert "[otel-genai-happy] What is the refund window?" in third_prompt
        # The metrics count each conversation once (by its first verdict).
        assert sidecar.metrics().get("tracejudge_assessments_total", name="frustration") == 6
        assert sidecar.stop() == 0

    archive = sidecar.data_dir / "archive"
    rows = query(archive, "assessments", "SELECT name, session_id, trace_id, span_id, trace_ids, assessment_id, "
                                         "overrides FROM t")  # fmt: skip
    assert len(rows) == 21
    for _name, session_id, trace_id, span_id, trace_ids, assessment_id, overrides in rows:
        assert assessment_id
        turns = turns_by_session(grpc_sink)[session_id]
        judged = list(trace_ids)
        assert judged == [t.hex() for _, t, _ in turns][: len(judged)] and len(judged) in (2, 3)
        assert (trace_id, span_id) == (turns[0][1].hex(), turns[0][2].hex())
        assert (overrides is not None) == (len(judged) == 3)
    superseded = {row[6] for row in rows if row[6]}
    assert superseded == {first_ids[(n, "otel-genai-happy")] for n in ("frustration", "complete", "convo_tone")}


def test_an_explicit_end_judges_at_once_and_a_restart_keeps_the_conversation(
    tmp_path: Path, grpc_sink: GrpcSink, sidecar_factory, monkeypatch
):
    """With a long idle time, turn 1 arrives, the sidecar is SIGKILLed, and after the restart turn 2 ends the
    conversation (tracejudge.session.end on its root): judged at once, on both turns. Another conversation is
    ended through the API (end_session in Python, `tracejudge scorers end-session` for an unknown id)."""
    with MockOpenAI() as app_model, MockOpenAI() as judge:
        config = session_config(judge, "10m")
        first = sidecar_factory([grpc_sink.url], config, name="kept")
        run_conversations(tmp_path / "one", "openllmetry", {"kept-1": ["[kept-1] Where is my parcel?"]},
                          first.grpc_target, app_model.base_url)  # fmt: skip
        journal = first.data_dir / "scoring" / "sessions.jsonl"
        assert wait_until(lambda: journal.exists() and b"kept-1" in journal.read_bytes(), timeout=30)
        first.kill()

        second = sidecar_factory([grpc_sink.url], config, name="kept")
        started = time.monotonic()
        run_conversations(tmp_path / "two", "openllmetry", {"kept-1": [f"{UNHAPPY} [end]"]}, second.grpc_target,
                          app_model.base_url)  # fmt: skip
        assert wait_until(lambda: len(verdicts(grpc_sink)) == 3, timeout=30), second.log_tail()
        assert time.monotonic() - started < 30  # not the 10 minutes of idle time
        frustration = next(attrs for scorer, _, _, _, attrs in verdicts(grpc_sink) if scorer == "frustration")
        assert frustration["gen_ai.evaluation.score.label"] == "unresolved"
        prompts = [r.user_text for r in judge.chat_requests()]
        assert len(prompts) == 3
        assert all(p.index("[kept-1] Where is my parcel?") < p.index("That is useless") for p in prompts)

        run_conversations(tmp_path / "three", "openinference", {"told": ["[told] Hello?"]}, second.grpc_target,
                          app_model.base_url)  # fmt: skip
        monkeypatch.setenv("TRACEJUDGE_ENDPOINT", second.grpc_target)
        journal_has_told = lambda: b'"told"' in journal.read_bytes()  # noqa: E731
        assert wait_until(journal_has_told, timeout=30)
        end_session("told")
        assert wait_until(lambda: len(verdicts(grpc_sink)) == 6, timeout=10), second.log_tail()
        assert {s for _, s, *_ in verdicts(grpc_sink)[3:]} == {"told"}
        with pytest.raises(ScorerNotFoundError, match="no open conversation with session id 'told'"):
            end_session("told")  # judged, nothing new since
        cli = CliRunner().invoke(main, ["scorers", "--endpoint", second.http_url, "end-session", "nobody"])
        assert (
            cli.exit_code == 1
            and "no open conversation with session id 'nobody'" in cli.output
            and "(NOT_FOUND)" in cli.output
        )
        assert second.stop() == 0


# --- the store, the spec and sampling, directly ---------------------------------------------------------------


def turn(trace: str, start_ms: int, request: str = "hi", response: str = "hello") -> Turn:
    return Turn(trace.ljust(32, "0"), trace[:16].ljust(16, "0"), start_ms, request, response)


def store(tmp_path: Path | None = None, **config: object) -> SessionStore:
    journal = tmp_path / "sessions.jsonl" if tmp_path is not None else None
    return SessionStore(SessionsConfig.model_validate({"idle": 10, **config}), journal)


def test_turns_are_ordered_by_start_and_a_replayed_trace_is_not_added_twice() -> None:
    sessions = store()
    sessions.add("s", turn("b", 2000), ["j"], frozenset({"j"}))
    sessions.add("s", turn("a", 1000), ["j"], frozenset())  # arrived later, started earlier: the first turn now
    sessions.add("s", turn("b", 2000), ["j"], frozenset({"j"}))
    [due] = sessions.due(time.time() + 11)
    assert [t.trace_id[0] for t in due.view.turns] == ["a", "b"]
    assert due.passed == frozenset()  # the filter is the first trace's (MLflow's rule)
    assert due.reason == "idle" and due.view.trace_id == turn("a", 0).trace_id


def test_a_session_is_due_when_idle_ended_or_at_its_caps() -> None:
    sessions = store(max_turns=3, max_age=100)
    now = time.time()
    sessions.add("idle", turn("a", 1), ["j"], frozenset({"j"}))
    sessions.add("ended", turn("b", 1), ["j"], frozenset({"j"}), ends=True)
    for number in range(3):
        sessions.add("long", turn(f"c{number}", number), ["j"], frozenset({"j"}))
    assert sorted((d.view.session_id, d.reason) for d in sessions.due(now + 1)) == [("ended", "ended"),
                                                                                    ("long", "max_turns")]  # fmt: skip
    assert [d.reason for d in sessions.due(now + 11)] == ["idle"]  # the others are being judged
    sessions.add("old", turn("d", 1), ["j"], frozenset({"j"}))
    assert [(d.view.session_id, d.reason) for d in sessions.due(now + 101)] == [("old", "max_age")]
    assert not store().end("unknown")


def test_a_judged_session_that_grows_is_judged_again_and_supersedes_its_verdicts() -> None:
    sessions = store()
    sessions.add("s", turn("a", 1), ["j"], frozenset({"j"}))
    [due] = sessions.due(time.time() + 11)
    sessions.judged(due, {"j": "verdict-1"})
    assert sessions.due(time.time() + 100) == []  # nothing new: not judged again
    sessions.add("s", turn("b", 2), ["j"], frozenset({"j"}))
    [again] = sessions.due(time.time() + 11)
    assert len(again.view.turns) == 2 and again.superseded == {"j": "verdict-1"}


def test_past_its_byte_cap_the_store_forgets_judged_sessions_then_judges_the_oldest_early() -> None:
    sessions = store(max_bytes=3000)
    sessions.add("judged", turn("a", 1, "x" * 500), ["j"], frozenset({"j"}))
    [due] = sessions.due(time.time() + 11)
    sessions.judged(due, {"j": "v"})
    sessions.add("old", turn("b", 1, "x" * 1000), ["j"], frozenset({"j"}))
    sessions.add("new", turn("c", 1, "x" * 1000), ["j"], frozenset({"j"}))
    assert sessions.sessions == 2  # the judged one was forgotten first
    sessions.add("newer", turn("d", 1, "x" * 1000), ["j"], frozenset({"j"}))
    assert [(d.view.session_id, d.reason) for d in sessions.due(time.time())] == [("old", "memory_cap")]


def test_the_journal_rebuilds_open_and_judged_sessions_after_a_kill(tmp_path: Path, caplog) -> None:
    first = store(tmp_path)
    first.add("open", turn("a", 1, "first question"), ["j"], frozenset({"j"}))
    first.add("judged", turn("b", 1), ["j"], frozenset({"j"}))
    first.judged(next(d for d in first.due(time.time() + 11) if d.view.session_id == "judged"), {"j": "v1"})
    first.end("open")
    with (tmp_path / "sessions.jsonl").open("ab") as journal:  # the kill came mid-write
        journal.write(b'{"op": "turn", "s": "torn"')
    second = store(tmp_path)  # without close(): as after a SIGKILL
    [due] = second.due(time.time())
    assert (due.view.session_id, due.reason, due.view.turns[0].request) == ("open", "ended", "first question")
    second.add("judged", turn("c", 2), ["j"], frozenset({"j"}))
    [again] = second.due(time.time() + 11)
    assert again.superseded == {"j": "v1"} and len(again.view.turns) == 2
    assert "ends in a torn line (26 bytes); cut off" in caplog.text
    third = store(tmp_path)  # what came after the torn line was kept whole
    assert [len(d.view.turns) for d in third.due(time.time() + 11) if d.view.session_id == "judged"] == [2]


def test_the_journal_is_rewritten_once_it_holds_twice_what_the_sessions_need(tmp_path: Path) -> None:
    sessions = store(tmp_path)
    for number in range(3000):  # each conversation judged and closed at its caps: the journal is mostly history
        sessions.add(f"s{number}", turn(f"t{number}", 1, "q" * 300), ["j"], frozenset({"j"}), ends=True)
        [due] = sessions.due(time.time())
        sessions.judged(due, {"j": f"v{number}"})
    sessions.add("kept", turn("k", 1, "still open"), ["j"], frozenset({"j"}))
    journal = tmp_path / "sessions.jsonl"
    assert journal.stat().st_size < 2 * 2**20  # 3,000 turns of 300+ bytes were written; compaction kept it small
    [due] = [d for d in store(tmp_path).due(time.time() + 11) if d.view.session_id == "kept"]
    assert due.view.turns[0].request == "still open"


def test_sessions_are_sampled_consistently_and_nested_by_their_id() -> None:
    ids = [f"conversation-{n}" for n in range(4000)]
    at = {rate: {i for i in ids if session_randomness(i) >= threshold(rate)} for rate in (0.1, 0.5)}
    assert at[0.1] <= at[0.5]
    assert 0.07 < len(at[0.1]) / len(ids) < 0.13 and 0.45 < len(at[0.5]) / len(ids) < 0.55
    assert session_randomness("conversation-1") == session_randomness("conversation-1")


def test_a_scorers_target_follows_from_it_and_a_wrong_one_is_refused() -> None:
    assert ScorerSpec(name="f", builtin="UserFrustration").target_kind == "session"
    assert ScorerSpec(name="p", instructions="Polite in {{ conversation }}?").target_kind == "session"
    assert ScorerSpec(name="s", builtin="Safety").target_kind == "trace"
    with pytest.raises(ValidationError, match="judges whole conversations: its target is session, not trace"):
        ScorerSpec(name="f", builtin="UserFrustration", target="trace")
    with pytest.raises(ValidationError, match="judges one trace, not a conversation"):
        ScorerSpec(name="s", builtin="Safety", target="session")
    with pytest.raises(ValidationError, match="needs params"):
        ScorerSpec(name="g", builtin="ConversationalGuidelines")


def test_a_code_scorer_taking_a_session_needs_a_session_target(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "convo_scorers.py").write_text("def turns(session):\n    return len(session)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(CodeScorerError, match="give it `target: session`"):
        load_function("convo_scorers:turns")
    function = load_function("convo_scorers:turns", session=True)
    view = SessionView("s", (turn("a", 1), turn("b", 2)))
    assert bind_arguments(function, view) == {"session": list(view.turns)}


CONVERSATION_SCORER = """
from tracejudge.scorers import Feedback

def turns(session, conversation):
    roles = "".join(message["role"][0] for message in conversation)
    return Feedback(value=len(session), rationale=" | ".join(turn.request for turn in session) + " | " + roles)
"""


def test_a_code_scorer_judges_a_whole_conversation(tmp_path: Path, grpc_sink: GrpcSink):
    (tmp_path / "scorers").mkdir()
    (tmp_path / "scorers" / "convo_scorers.py").write_text(CONVERSATION_SCORER)
    config = {
        "assembler": {"trace_idle": "200ms"},
        "sessions": {"idle": "1s"},
        "scorers": [{"name": "turns", "code": "convo_scorers:turns", "target": "session", "sample_rate": 1.0}],
    }
    with MockOpenAI() as app_model:
        sidecar = SidecarProcess(tmp_path / "tj", [grpc_sink.url], config,
                                 env={"PYTHONPATH": str(tmp_path / "scorers")}).start()  # fmt: skip
        try:
            run_conversations(tmp_path / "app", "openllmetry", {"coded": ["First question?", "Second question?"]},
                              sidecar.grpc_target, app_model.base_url)  # fmt: skip
            assert wait_until(lambda: len(verdicts(grpc_sink)) == 1, timeout=30), sidecar.log_tail()
        finally:
            sidecar.stop()
    [(scorer, session_id, _, _, attrs)] = verdicts(grpc_sink)
    assert (scorer, session_id, attrs["gen_ai.evaluation.score.value"]) == ("turns", "coded", 2.0)
    assert attrs["gen_ai.evaluation.explanation"] == "First question? | Second question? | suaua"

"""Past traces: backfill, evaluate and `scorers try` over the archive a real sidecar wrote of a real OTel GenAI
app's conversations (opentelemetry-instrumentation-openai-v2 against the mock OpenAI server)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
import yaml
from click.testing import CliRunner
from instrumented_apps import archived_conversations
from mock_openai import MockOpenAI
from test_scoring_e2e import evaluation_spans

import tracejudge
from tracejudge.backfill import OUTPUT_TOKENS_GUESS, Backfill, BackfillError, BackfillScorerConfig
from tracejudge.cli import main
from tracejudge.exporter.archive_reader import ArchiveTraceSource
from tracejudge.otlp import any_value
from tracejudge.scorers import NonEmptyResponse, ScorerClient, UserFrustration
from tracejudge.scoring.sampling import sampled, session_randomness, threshold
from tracejudge.testing import SidecarProcess, wait_until

from archive_reader import archived_trace_ids, query
from otlp_peers import GrpcSink, get_json, post_json

CONVERSATIONS = {f"chat-{i:02d}": [f"[chat-{i:02d}] What is the refund window?", "And for damaged items?"]
                 for i in range(12)}  # fmt: skip
TRACES = sum(len(turns) for turns in CONVERSATIONS.values())


def scorers(version: int = 1) -> list[dict[str, Any]]:
    return [
        {"name": "no_error", "builtin": "NoError", "sample_rate": 0.5},  # live at 0.5
        {"name": "non_empty", "builtin": "NonEmptyResponse", "version": version},  # registered, stopped
        {"name": "safety", "builtin": "Safety"},
        {"name": "frustration", "builtin": "UserFrustration"},
    ]


def config(judge: MockOpenAI, version: int = 1, concurrency: int = 16) -> dict[str, Any]:
    return {"judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY",
                                   "max_concurrency": concurrency}},
            "scorers": scorers(version)}  # fmt: skip


@pytest.fixture(scope="module")
def judge() -> Any:
    with MockOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, judge: MockOpenAI) -> Path:
    """A data directory: 24 traces of 12 two-turn conversations, archived; `no_error` scored live at 0.5."""
    data_dir = archived_conversations(tmp_path_factory.mktemp("backfill"), CONVERSATIONS, config(judge), judge.base_url)
    assert len(trace_ids(data_dir)) == TRACES
    return data_dir


trace_ids = archived_trace_ids


def verdict_rows(data_dir: Path, name: str) -> list[tuple[Any, ...]]:
    sql = f"SELECT trace_id, scorer_version, value, metadata FROM t WHERE name = '{name}'"
    if not list((data_dir / "archive" / "assessments").glob("date=*/hour=*/*.parquet")):
        return []
    return query(data_dir / "archive", "assessments", sql)


def copy(data_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(data_dir, target)
    return target


def backfill_cli(*args: str) -> Any:
    result = CliRunner().invoke(main, ["backfill", "--no-progress", *args], catch_exceptions=False)
    return result


def write_config(path: Path, judge: MockOpenAI, version: int = 1, concurrency: int = 16) -> Path:
    path.write_text(yaml.safe_dump(config(judge, version, concurrency)))
    return path


def test_a_backfill_at_the_live_rate_picks_exactly_the_live_sample(archive: Path, tmp_path: Path) -> None:
    data = copy(archive, tmp_path)
    live = {row[0] for row in verdict_rows(data, "no_error")}
    assert live == {t for t in trace_ids(data) if sampled(t, 0.5)} and 0 < len(live) < TRACES

    again = backfill_cli("--archive", str(data), "--scorer", "no_error", "--since", "1h", "--yes")
    assert again.exit_code == 0, again.output
    assert f"no_error: 0 to judge ({len(live)} already scored)" in again.output
    assert len(verdict_rows(data, "no_error")) == len(live)  # nothing added

    rescored = backfill_cli("--archive", str(data), "--scorer", "no_error", "--since", "1h", "--rescore", "--yes")
    assert rescored.exit_code == 0, rescored.output
    backfilled = [row for row in verdict_rows(data, "no_error") if "backfill_job" in row[3]]
    assert {row[0] for row in backfilled} == live and len(backfilled) == len(live)


def test_a_stopped_scorer_is_backfilled_on_the_consistent_sample_once_and_again_for_a_new_version(
    archive: Path, tmp_path: Path, judge: MockOpenAI
) -> None:
    data = copy(archive, tmp_path)
    first = backfill_cli("--archive", str(data), "--scorer", "non_empty=0.5", "--since", "1h", "--yes")
    assert first.exit_code == 0, first.output
    assert f"succeeded: {TRACES} traces read" in first.output  # those no scorer samples, read but not rebuilt
    expected = {t for t in trace_ids(data) if sampled(t, 0.5)}
    rows = verdict_rows(data, "non_empty")
    assert Counter(row[0] for row in rows) == Counter(expected)
    assert {row[2] for row in rows} == {"true"}  # every turn has an answer

    second = backfill_cli("--archive", str(data), "--scorer", "non_empty=0.5", "--since", "1h", "--yes")
    assert second.exit_code == 0 and f"already_scored {len(expected)}" in second.output, second.output
    assert len(verdict_rows(data, "non_empty")) == len(expected)

    changed = write_config(tmp_path / "v2.yaml", judge, version=2)
    third = backfill_cli("--archive", str(data), "--config", str(changed), "--scorer", "non_empty=0.5", "--yes")
    assert third.exit_code == 0, third.output
    by_version = Counter(row[1] for row in verdict_rows(data, "non_empty"))
    assert by_version == {1: len(expected), 2: len(expected)}


def test_backfilled_verdicts_land_in_the_original_traces_at_the_backend(
    archive: Path, tmp_path: Path, judge: MockOpenAI
) -> None:
    data = copy(archive, tmp_path)
    sink = GrpcSink().start()
    try:
        done = backfill_cli("--archive", str(data), "--config", str(write_config(tmp_path / "c.yaml", judge)),
                            "--scorer", "safety=1", "--scorer", "frustration=1", "--since", "1h",
                            "--otlp-endpoint", f"grpc://127.0.0.1:{sink.port}", "--yes")  # fmt: skip
        assert done.exit_code == 0, done.output
        spans = wait_until(lambda: (found := evaluation_spans(sink)) and len(found) >= TRACES + 12 and found)
    finally:
        sink.stop()
    archived = trace_ids(data)
    assert {span.trace_id.hex() for span in spans} <= archived
    names = Counter(span.name for span in spans)
    assert names == {"evaluation safety": TRACES, "evaluation frustration": len(CONVERSATIONS)}
    for span in spans:
        attributes = {a.key: any_value(a.value) for a in span.attributes}
        assert "backfill_job" in attributes["tracejudge.assessment.metadata"]
    # the session verdicts sit on each conversation's first trace, in the archive too
    rows = query(data / "archive", "assessments",
                 "SELECT trace_id, len(trace_ids) FROM t WHERE name = 'frustration'")  # fmt: skip
    assert len(rows) == len(CONVERSATIONS) and {n for _, n in rows} == {2}


def test_the_estimate_counts_exactly_what_is_judged_and_unknown_scorers_are_refused(
    archive: Path, tmp_path: Path, judge: MockOpenAI
) -> None:
    data = copy(archive, tmp_path)
    from tracejudge.config_file import Config

    cfg = Config.model_validate(config(judge))
    with pytest.raises(BackfillError, match=r"frustration.*stopped: give a rate"):
        Backfill(data, [BackfillScorerConfig("safety", 0.3), "frustration"], config=cfg, start_time="1h")
    backfill = Backfill(data, [BackfillScorerConfig("safety", 0.3), BackfillScorerConfig("frustration", 0.5)],
                        config=cfg, start_time="1h")  # fmt: skip
    estimate = backfill.estimate()
    sessions = {f"chat-{i:02d}" for i in range(12)}
    assert estimate.pairs == {
        "safety": sum(1 for t in trace_ids(data) if sampled(t, 0.3)),
        "frustration": sum(1 for s in sessions if session_randomness(s) >= threshold(0.5)),
    }
    job = backfill.run()
    assert job.status == "succeeded" and job.assessments == {k: v for k, v in estimate.pairs.items() if v}
    # neither judge had a verdict yet: their tokens come from their prompts on the window's traces (and an
    # answer's guessed length), near what the judge's usage then said
    assert estimate.tokens_from_prompts == ["frustration", "safety"] and estimate.tokens is not None
    prompts = estimate.tokens - estimate.judge_calls * OUTPUT_TOKENS_GUESS  # what the prompts were estimated at
    assert 0.8 <= prompts / job.input_tokens <= 1.25, (estimate, job)
    assert "from their prompts on the window's traces" in estimate.describe()
    again = Backfill(data, [BackfillScorerConfig("safety", 0.3)], config=cfg, start_time="1h").estimate()
    assert again.pairs == {"safety": 0} and again.tokens == 0  # tokens known now, from the verdicts just made
    with pytest.raises(BackfillError, match="'nope' is not registered"):
        Backfill(data, ["nope"], config=cfg)
    refused = backfill_cli("--archive", str(data), "--scorer", "nope", "--yes")
    assert refused.exit_code == 1 and "'nope' is not registered (registered: " in refused.output


@pytest.mark.parametrize("rescore", [False, True])
def test_a_killed_backfill_resumes_without_judging_twice(archive: Path, tmp_path: Path, judge: MockOpenAI,
                                                         rescore: bool) -> None:  # fmt: skip
    """And a rescoring job, resumed, judges again what it had not reached, though an earlier run scored it."""
    data = copy(archive, tmp_path)
    if rescore:
        earlier = backfill_cli("--archive", str(data), "--config", str(write_config(tmp_path / "fast.yaml", judge)),
                               "--scorer", "safety=1", "--since", "1h", "--yes")  # fmt: skip
        assert earlier.exit_code == 0 and len(verdict_rows(data, "safety")) == TRACES, earlier.output
    done_before = {p.stem for p in (data / "backfill").glob("*.json")}
    with MockOpenAI(latency=0.25) as slow:  # one call at a time: ~6 s for the 24 traces; a file closes every 2 s
        cfg = write_config(tmp_path / "slow.yaml", slow, concurrency=1)
        command = [
            sys.executable,
            "-m",
            "tracejudge.cli",
            "backfill",
            "--archive",
            str(data),
            "--config",
            str(cfg),
            "--scorer",
            "safety=1",
            "--since",
            "1h",
            "--yes",
            "--no-progress",
            *(["--rescore"] * rescore),
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        [job_id] = wait_until(lambda: list({p.stem for p in (data / "backfill").glob("*.json")} - done_before))

        def this_job() -> list[tuple[Any, ...]]:
            return [row for row in verdict_rows(data, "safety") if job_id in row[3]]

        wait_until(lambda: len(this_job()) > 0, timeout=60)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        before = len(this_job())
        assert 0 < before < TRACES
        assert orjson.loads((data / "backfill" / f"{job_id}.json").read_bytes())["status"] == "running"
        asked = len(slow.chat_requests())
        resumed = backfill_cli("--archive", str(data), "--config", str(cfg), "--resume", job_id, "--yes")
        assert resumed.exit_code == 0, resumed.output
    assert Counter(row[0] for row in this_job()) == Counter(trace_ids(data))  # each trace exactly once
    assert len(slow.chat_requests()) - asked == TRACES - before
    assert len(verdict_rows(data, "safety")) == TRACES * (1 + rescore)  # the earlier run's stay
    listed = CliRunner().invoke(main, ["backfill", "--archive", str(data), "--list"])
    assert f"{job_id}  succeeded" in listed.output


def test_evaluate_gives_live_verdicts_over_the_archive_rows_and_a_dataframe(archive: Path, tmp_path: Path) -> None:
    live = {row[0]: row[2] for row in verdict_rows(archive, "no_error")}
    result = tracejudge.evaluate(tracejudge.ArchivedTraces(archive, since="1h"), [{"name": "no_error",
                                 "builtin": "NoError"}], output_path=tmp_path / "out.parquet")  # fmt: skip
    judged = {row["trace_id"]: row["value"] for row in result.rows}
    assert judged.keys() == trace_ids(archive) and {t: judged[t] for t in live} == live
    assert result.metrics["no_error/pass_rate"] == 1.0 and result.metrics["no_error/count"] == TRACES
    written = duckdb.sql(f"SELECT count(*), count(DISTINCT request) FROM '{tmp_path / 'out.parquet'}'").fetchall()
    assert written[0][0] == TRACES and written[0][1] > 1
    # the same traces as dataset rows (JSONL), and as a DataFrame, including a multi-turn judge over sessions
    sessions = dict(query(archive / "archive", "traces", "SELECT trace_id, session_id FROM t"))
    rows = [{"trace_id": r["trace_id"], "inputs": r["request"], "outputs": r["response"],
             "session_id": sessions[r["trace_id"]]} for r in result.rows]  # fmt: skip
    lines = tmp_path / "rows.jsonl"
    lines.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    from_file = tracejudge.evaluate(str(lines), [NonEmptyResponse()])
    assert {r["trace_id"]: r["value"] for r in from_file.rows} == {t: "true" for t in judged}
    pandas = pytest.importorskip("pandas")
    frame = tracejudge.evaluate(pandas.DataFrame(rows), [NonEmptyResponse(), {"name": "frustration",
                                "builtin": "UserFrustration", "model": None}],
                                judges={"default": {"base_url": "http://127.0.0.1:9", "timeout": "1s",
                                                    "max_retries": 0}})  # fmt: skip
    df = frame.result_df
    assert set(df["name"]) == {"non_empty_response", "frustration"}
    assert frame.sessions == 12 and (df["name"] == "frustration").sum() == 12
    assert set(df[df["name"] == "frustration"]["error_type"]) <= {"connection", "timeout", "exception"}
    assert frame.metrics["frustration/error_count"] == 12  # a judge that is down: an error per verdict, not a gap


def test_scorers_try_shows_each_verdict_next_to_its_trace_and_records_nothing(
    archive: Path, tmp_path: Path, judge: MockOpenAI
) -> None:
    data = copy(archive, tmp_path)
    before = len(verdict_rows(data, "safety"))
    cfg = write_config(tmp_path / "c.yaml", judge)
    shown = CliRunner().invoke(main, ["scorers", "try", "safety", "--archive", str(data), "--config", str(cfg),
                                      "--last", "5"])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("safety = yes") == 5
    assert shown.output.count("request:   [chat-") + shown.output.count("request:   And for damaged items?") == 5
    latest = query(data / "archive", "traces", "SELECT trace_id FROM t ORDER BY start_time DESC LIMIT 5")
    assert {line.split()[1] for line in shown.output.splitlines() if line.startswith("trace ")} == {
        row[0] for row in latest
    }
    assert "rationale: mock rationale" in shown.output and "safety: count=5" in shown.output
    assert len(verdict_rows(data, "safety")) == before
    one = sorted(trace_ids(data))[0]
    picked = CliRunner().invoke(main, ["scorers", "try", "NoError", "--archive", str(data), "--trace-id", one])
    assert picked.exit_code == 0 and f"trace {one}  no_error = yes" in picked.output, picked.output
    unknown = CliRunner().invoke(main, ["scorers", "try", "nope", "--archive", str(data)])
    assert unknown.exit_code == 1 and "no scorer 'nope'" in unknown.output


def test_evaluate_refuses_bad_data_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="row 1: expectations must be a mapping"):
        tracejudge.evaluate([{"inputs": "a", "outputs": "b"}, {"inputs": "a", "expectations": "x"}],
                            [NonEmptyResponse()])  # fmt: skip
    with pytest.raises(TypeError, match="data is one mapping"):
        tracejudge.evaluate({"inputs": "a"}, [NonEmptyResponse()])
    with pytest.raises(ValueError, match="two scorers are named non_empty_response"):
        tracejudge.evaluate([{"inputs": "a"}], [NonEmptyResponse(), NonEmptyResponse()])
    assert UserFrustration().to_dict()["builtin"] == "UserFrustration"


def test_a_dataset_exported_with_feedback_and_expectations_is_read_back_by_evaluate_and_backfill(
    archive: Path, tmp_path: Path, judge: MockOpenAI
) -> None:
    data = copy(archive, tmp_path)
    picked = sorted(trace_ids(data))[:3]
    sidecar = SidecarProcess(data, [], config(judge)).start()  # the sidecar that wrote the archive, restarted
    try:
        client = ScorerClient(sidecar.grpc_target)
        for trace_id in picked:
            client.log_feedback(trace_id, "thumbs", trace_id != picked[0], rationale=f"said of {trace_id}",
                                source=tracejudge.AssessmentSource("HUMAN", "user-7"))  # fmt: skip
        client.log_expectation(picked[1], "expected_response", "Refunds take 90 days. VERDICT:no")
    finally:
        assert sidecar.stop() == 0, sidecar.log_tail()
    labelled = CliRunner().invoke(main, ["dataset", "export", "--archive", str(data), "--since", "1h",
                                         "--with-feedback", "--out", str(tmp_path / "labelled.jsonl")])  # fmt: skip
    assert labelled.exit_code == 0 and "3 rows written" in labelled.output, labelled.output
    rows = [orjson.loads(line) for line in (tmp_path / "labelled.jsonl").read_bytes().splitlines()]
    assert {row["trace_id"]: [f["value"] for f in row["feedback"]] for row in rows} == {
        picked[0]: [False], picked[1]: [True], picked[2]: [True]}  # fmt: skip
    assert {row["trace_id"] for row in rows if row["expectations"]} == {picked[1]}
    assert all(row["inputs"] and row["outputs"] and row["session_id"] for row in rows)
    every = CliRunner().invoke(main, ["dataset", "export", "--archive", str(data), "--since", "1h",
                                      "--filter", "attributes.model = 'gpt-4.1-mini'",
                                      "--out", str(tmp_path / "all.parquet")])  # fmt: skip
    assert every.exit_code == 0 and f"{TRACES} rows written" in every.output, every.output
    # the logged expectation reaches Correctness: from the dataset file, over the archive, and in a backfill
    correctness = [{"name": "correctness", "builtin": "Correctness"}]
    judges = config(judge)["judges"]
    for source in (str(tmp_path / "all.parquet"), tracejudge.ArchivedTraces(data, since="1h")):
        result = tracejudge.evaluate(source, correctness, judges=judges)
        labels = {row["trace_id"]: row["label"] for row in result.rows}
        assert labels.keys() == trace_ids(data) and labels.pop(picked[1]) == "no"
        assert set(labels.values()) == {"not_applicable"}  # nothing to compare with
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**config(judge), "scorers": [*scorers(), *correctness]}))
    done = backfill_cli("--archive", str(data), "--config", str(cfg), "--scorer", "correctness=1", "--since", "1h",
                        "--yes")  # fmt: skip
    assert done.exit_code == 0, done.output
    backfilled = {row[0]: row[2] for row in verdict_rows(data, "correctness")}
    assert backfilled[picked[1]] == "no" and len(backfilled) == TRACES


def test_a_backfill_job_in_the_sidecar_scores_the_sample_once_emits_into_the_traces_and_answers_over_http(
    archive: Path, tmp_path: Path, judge: MockOpenAI
) -> None:
    data = copy(archive, tmp_path)
    live = {row[0] for row in verdict_rows(data, "no_error")}
    expected = {t for t in trace_ids(data) if sampled(t, 0.5)}
    sink = GrpcSink().start()
    sidecar = SidecarProcess(data, [sink.url], config(judge)).start()
    try:
        client = ScorerClient(sidecar.grpc_target)
        estimate = client.backfill_scorers([BackfillScorerConfig("non_empty", 0.5)], "1h", dry_run=True).wait(120)
        assert estimate.status == "estimate" and estimate.estimate["pairs"] == {"non_empty": len(expected)}
        assert not verdict_rows(data, "non_empty")  # a dry run judges nothing
        job = tracejudge.scorers.ScorerClient(sidecar.grpc_target).backfill_scorers(
            [BackfillScorerConfig("non_empty", 0.5), "no_error"], start_time="1h").wait(180)  # fmt: skip
        assert job.status == "succeeded", job.to_dict()
        assert job.assessments == {"non_empty": len(expected)}
        assert job.skipped["no_error/already_scored"] == len(live)  # judged live already
        rows = verdict_rows(data, "non_empty")
        assert Counter(row[0] for row in rows) == Counter(expected)
        spans = wait_until(lambda: len(found := evaluation_spans(sink)) >= len(expected) and found)
        assert sorted(span.trace_id.hex() for span in spans) == sorted(expected)  # in the original traces
        assert {span.name for span in spans} == {"evaluation non_empty"}
        assert all("backfill_job" in {a.key: any_value(a.value) for a in s.attributes}[
            "tracejudge.assessment.metadata"] for s in spans)  # fmt: skip
        # over HTTP/JSON: a second run adds nothing; refusals name what is wrong
        status, started = post_json(
            f"{sidecar.http_url}/v1/backfills",
            {"scorers": [{"scorer": "non_empty", "sample_rate": 0.5}], "start_time": "1h"},
        )
        assert status == 200, started
        again = wait_until(lambda: (j := get_json(f"{sidecar.http_url}/v1/backfills/{started['job_id']}")[1])
                           and j["status"] not in ("pending", "running") and j, timeout=180)  # fmt: skip
        assert again and again["status"] == "succeeded", (again, sidecar.log_tail())
        assert again.get("assessments", {}) == {}  # proto3 JSON leaves empty maps out
        assert again["skipped"] == {"non_empty/already_scored": str(len(expected))}  # int64 as text
        assert len(verdict_rows(data, "non_empty")) == len(expected)
        status, refused = post_json(f"{sidecar.http_url}/v1/backfills", {"scorers": [{"scorer": "nope"}]})
        assert status == 400 and "'nope' is not registered" in refused["message"], refused
        status, refused = post_json(f"{sidecar.http_url}/v1/backfills", {"scorers": [{"scorer": "non_empty"}]})
        assert status == 400 and "stopped: give a rate" in refused["message"], refused
        assert get_json(f"{sidecar.http_url}/v1/backfills/bf-none")[0] == 404
        listed = {j.job_id: j.status for j in client.list_backfills()}
        assert listed == {job.job_id: "succeeded", started["job_id"]: "succeeded"}
        # the CLI without --archive asks the running sidecar
        shown = CliRunner().invoke(main, ["backfill", "--endpoint", sidecar.grpc_target, "--scorer", "safety=0.25",
                                          "--since", "1h", "--yes", "--no-progress"])  # fmt: skip
        assert shown.exit_code == 0, shown.output
        judged = {t for t in trace_ids(data) if sampled(t, 0.25)}
        assert f"safety: {len(judged)} to judge" in shown.output and "succeeded" in shown.output, shown.output
        assert Counter(row[0] for row in verdict_rows(data, "safety")) == Counter(judged)
    finally:
        assert sidecar.stop() == 0, sidecar.log_tail()
        sink.stop()


def test_a_sidecar_killed_mid_backfill_resumes_the_job_at_its_next_start_without_judging_twice(
    archive: Path, tmp_path: Path
) -> None:
    data = copy(archive, tmp_path)
    with MockOpenAI(latency=0.25) as slow:  # one call at a time: ~6 s for the 24 traces
        cfg = {**config(slow), "backfill": {"max_concurrency": 1}}
        sidecar = SidecarProcess(data, [], cfg).start()
        try:
            job = ScorerClient(sidecar.grpc_target).backfill_scorers([BackfillScorerConfig("safety", 1.0)], "1h")
            wait_until(lambda: len(verdict_rows(data, "safety")) > 0, timeout=60)
        finally:
            sidecar.kill()
        restarted = SidecarProcess(data, [], cfg).start()
        try:
            done = ScorerClient(restarted.grpc_target).get_backfill(job.job_id).wait(240)
            assert done.status == "succeeded", done.to_dict()
            assert "resumed" in restarted.log()
        finally:
            assert restarted.stop() == 0, restarted.log_tail()
    rows = verdict_rows(data, "safety")
    assert Counter(row[0] for row in rows) == Counter(trace_ids(data))  # each trace exactly once
    assert len(slow.chat_requests()) <= TRACES + 4  # at most the calls in flight at the kill, again


def test_the_reader_rebuilds_only_the_traces_wanted_and_counts_the_others(archive: Path) -> None:
    now = datetime.now(timezone.utc)
    source = ArchiveTraceSource(archive / "archive", now - timedelta(hours=1), now, wanted=lambda t: sampled(t, 0.5))
    yielded = [trace.trace_id.hex() for batch in source.batches() for trace in batch]
    expected = {t for t in trace_ids(archive) if sampled(t, 0.5)}
    assert sorted(yielded) == sorted(expected) and 0 < len(expected) < TRACES
    assert source.passed_over == TRACES - len(expected)

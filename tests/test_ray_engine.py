"""`--engine ray`: backfill and evaluate on a local Ray (ray.init(num_cpus=2)) over an archive a real sidecar wrote
of a real OTel GenAI app (opentelemetry-instrumentation-openai-v2 against the mock OpenAI server), giving exactly
the local engine's verdicts on a copy of the same archive."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from instrumented_apps import archived_conversations
from mock_openai import MockOpenAI

import tracejudge
from tracejudge.cli import main
from tracejudge.exporter import rows
from tracejudge.exporter.archive_worker import TableWriter
from tracejudge.scoring.sampling import sampled
from tracejudge.synthetic import genai_trace_spans

from archive_reader import archived_trace_ids, query

try:
    import ray
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip("needs Ray Data: pip install 'tracejudge[ray]' (the test extras include it)", allow_module_level=True)

CONVERSATIONS = {f"talk-{i:02d}": [f"[talk-{i:02d}] What is the refund window?", "And for damaged items?"]
                 for i in range(10)}  # fmt: skip
TRACES = sum(len(turns) for turns in CONVERSATIONS.values())


def config(judge: MockOpenAI, version: int = 1) -> dict[str, Any]:
    return {
        "judges": {"default": {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY"}},
        "scorers": [
            {"name": "no_error", "builtin": "NoError", "sample_rate": 0.5},  # live at 0.5
            {"name": "non_empty", "builtin": "NonEmptyResponse", "version": version},  # registered, stopped
            {"name": "safety", "builtin": "Safety"},  # an LLM judge (the mock answers)
            {"name": "frustration", "builtin": "UserFrustration"},  # a judge over whole conversations
        ],
    }


@pytest.fixture(scope="module")
def judge() -> Any:
    with MockOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def local_ray() -> Any:
    """One local Ray for the module: two CPUs, as CI has; the engine joins it rather than start its own."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, judge: MockOpenAI) -> Path:
    """A data directory: 20 traces of 10 two-turn conversations, archived; `no_error` scored live at 0.5."""
    data_dir = archived_conversations(tmp_path_factory.mktemp("ray"), CONVERSATIONS, config(judge), judge.base_url)
    assert len(trace_ids(data_dir)) == TRACES
    return data_dir


trace_ids = archived_trace_ids


def verdicts(data_dir: Path) -> Counter[tuple[Any, ...]]:
    """Every verdict row a backfill wrote: (trace_id, name, value, scorer_version), as DuckDB reads them."""
    return Counter(query(data_dir / "archive", "assessments", "SELECT trace_id, name, value, scorer_version FROM t "
                                                              "WHERE metadata LIKE '%backfill_job%'"))  # fmt: skip


def backfill(data: Path, cfg: Path, *args: str) -> Any:
    scorers = ["--scorer", "no_error", "--scorer", "non_empty=0.5", "--scorer", "safety=1", "--scorer", "frustration=1"]
    result = CliRunner().invoke(main, ["backfill", "--no-progress", "--archive", str(data), "--config", str(cfg),
                                       *scorers, "--since", "1h", "--yes", *args], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


def summary(result: Any) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("succeeded") or "not judged" in line]


def test_a_ray_backfill_writes_exactly_the_local_verdicts_and_a_second_run_adds_nothing(
    archive: Path, tmp_path: Path, judge: MockOpenAI, local_ray: None
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config(judge)))
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    shutil.copytree(archive, local)
    shutil.copytree(archive, on_ray)

    here = backfill(local, cfg)
    ran = backfill(on_ray, cfg, "--engine", "ray")
    expected = verdicts(local)
    assert verdicts(on_ray) == expected
    assert summary(ran) == summary(here)  # traces read, verdicts, judge tokens, what was not judged and why
    names = Counter(name for _, name, _, _ in expected.elements())
    sampled_half = sum(1 for t in trace_ids(archive) if sampled(t, 0.5))
    assert names == {"non_empty": sampled_half, "safety": TRACES, "frustration": len(CONVERSATIONS)}  # no_error: live
    assert f"already_scored {sampled_half}" in ran.output  # no_error's live verdicts, left alone on Ray too
    # the rows are in the archive's layout: the same hour partitions and closed files DuckDB reads
    assert list((on_ray / "archive" / "assessments").glob("date=*/hour=*/part-*.parquet"))
    assert not list((on_ray / "archive" / "assessments").glob("date=*/hour=*/.*"))

    again = backfill(on_ray, cfg, "--engine", "ray")
    assert verdicts(on_ray) == expected  # idempotent per (trace, scorer, version)
    assert "verdicts: none" in again.output


def test_evaluate_on_ray_equals_evaluate_here(archive: Path, judge: MockOpenAI, local_ray: None) -> None:
    data = tracejudge.ArchivedTraces(archive, since="1h")
    scorers = ["non_empty", "safety", "frustration"]
    here = tracejudge.evaluate(data, scorers, config=_config(judge, archive))
    there = tracejudge.evaluate(data, scorers, config=_config(judge, archive), engine="ray")

    def rows(result: Any) -> Counter[tuple[Any, ...]]:
        return Counter((r["trace_id"], r["name"], r["value"], r["scorer_version"], r["request"], r["response"])
                       for r in result.rows)  # fmt: skip

    assert rows(there) == rows(here) and len(here.rows) == 2 * TRACES + len(CONVERSATIONS)
    assert there.metrics == here.metrics and (there.traces, there.sessions) == (here.traces, here.sessions)
    with pytest.raises(ValueError, match="evaluates archived traces of a window"):
        tracejudge.evaluate([{"inputs": "a", "outputs": "b"}], ["non_empty"], config=_config(judge, archive),
                            engine="ray")  # fmt: skip
    refused = CliRunner().invoke(main, ["evaluate", "--archive", str(archive), "--engine", "spark"])
    assert refused.exit_code == 2 and "give local, ray, or ray=ADDRESS" in refused.output


def test_a_trace_whose_spans_straddle_hour_partitions_is_rebuilt_whole_on_ray(tmp_path: Path, local_ray: None) -> None:
    """Each trace's child spans in one hour's file, its root in the next hour's (and one child again there, as a
    client's retry writes it): grouped by trace id, each is one whole trace, as the local reader rebuilds it."""
    hour = (time.time() // 3600 - 3) * 3600  # three hours ago, on the hour
    clock = [hour + 3360.0]  # HH:56
    spans = TableWriter(tmp_path / "archive" / "spans", rows.SPANS_SCHEMA, 2**26, float("inf"), lambda: clock[0])
    traces = [genai_trace_spans(os.urandom(16), int((hour + 3300 + i) * 1e9), f"s-{i}") for i in range(4)]
    spans.append(rows.spans_batch(_request([span for trace in traces for span in trace[1:]])))
    spans.close()
    clock[0] = hour + 3600 + 180  # the next hour, 3 minutes in: within the reader's lateness
    spans.append(rows.spans_batch(_request([span for trace in traces for span in trace[:2]])))
    spans.close()
    assert len(list((tmp_path / "archive" / "spans").glob("date=*/hour=*/*.parquet"))) == 2

    data = tracejudge.ArchivedTraces(tmp_path / "archive", since=_utc(hour), until=_utc(hour + 7200))
    scorers = [{"name": "non_empty", "builtin": "NonEmptyResponse"}, {"name": "no_error", "builtin": "NoError"}]
    here = tracejudge.evaluate(data, scorers)
    there = tracejudge.evaluate(data, scorers, engine="ray")
    assert here.traces == there.traces == 4 and not here.skipped and not there.skipped
    assert sorted(map(_verdict, there.rows)) == sorted(map(_verdict, here.rows))
    assert {(r["name"], r["value"]) for r in there.rows} == {("non_empty", "true"), ("no_error", "true")}


def _request(spans: list[Any]) -> Any:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    scope.spans.extend(spans)
    return request


def _verdict(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["trace_id"], row["name"], row["value"], row["request"], row["response"]


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def _config(judge: MockOpenAI, data_dir: Path) -> Any:
    from tracejudge.config_file import Config

    return Config.model_validate({**config(judge), "data_dir": str(data_dir)})

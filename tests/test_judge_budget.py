"""judges.budget: one spend limit shared by live scoring and backfill through the data directory's ledger.

A real sidecar judging real OTel traces with a judge behind the openai SDK (tests/mock_openai.py, whose `usage`
counts 4 characters a token), an offline backfill over an archive a sidecar wrote, and ledgers written by
separate processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from instrumented_apps import archived_conversations
from mock_openai import MockOpenAI
from test_inprocess import agent_turn, app_provider
from test_scoring_e2e import evaluation_spans, run_agent

from tracejudge.cli import main
from tracejudge.config import ConfigError
from tracejudge.config_file import load_config
from tracejudge.exporter import ScoringSpanProcessor
from tracejudge.scoring.budget import LEDGER_NAME, JudgeBudget
from tracejudge.scoring.code import CodeRunner
from tracejudge.scoring.config import JudgeBudgetConfig
from tracejudge.scoring.evaluators import build_evaluator
from tracejudge.scoring.filters import parse_filter
from tracejudge.scoring.judge_client import JudgePool
from tracejudge.scoring.loop import LoadedScorer, within_budget
from tracejudge.scoring.spec import ScorerSpec
from tracejudge.testing import SidecarProcess, wait_until

from archive_reader import query
from otlp_peers import GrpcSink, get_json

TRACES = 30
LIMIT = 4000  # judge tokens per hour: a handful of the mock's ~300-token verdicts


def judge_config(judge: MockOpenAI) -> dict[str, Any]:
    return {"base_url": judge.base_url, "api_key_env": "TRACEJUDGE_TEST_NO_KEY", "max_concurrency": 4}


def judged_tokens(archive: Path) -> list[tuple[str, int]]:
    rows = query(archive, "assessments", "SELECT name, judge_input_tokens + judge_output_tokens FROM t "
                                         "WHERE judge_input_tokens IS NOT NULL")  # fmt: skip
    return [(name, int(tokens)) for name, tokens in rows]


def budget_skips(archive: Path) -> Counter[str]:
    if not list((archive / "skipped").glob("date=*/hour=*/*.parquet")):
        return Counter()
    rows = query(archive, "skipped", "SELECT scorers, reason FROM t")
    return Counter(name for names, reason in rows if reason == "budget" for name in names)


def test_live_scoring_past_the_budget_skips_judge_pairs_evenly_and_says_so(tmp_path: Path) -> None:
    with MockOpenAI() as judge:
        config = {
            "assembler": {"trace_idle": "200ms"},
            "judges": {"default": judge_config(judge), "budget": {"tokens_per_hour": LIMIT}},
            "scorers": [{"name": "safety", "builtin": "Safety", "sample_rate": 1.0},
                        {"name": "relevance", "builtin": "RelevanceToQuery", "sample_rate": 1.0},
                        {"name": "no_error", "builtin": "NoError", "sample_rate": 1.0}],
        }  # fmt: skip
        sidecar = SidecarProcess(tmp_path / "tj", [], config).start()
        try:
            run_agent(sidecar.grpc_target, [("A refund is due within 30 days.", False)] * TRACES)
            scored = lambda name: sidecar.metric("tracejudge_scoring_scored_total", scorer=name)  # noqa: E731
            skipped = lambda name: sidecar.metric("tracejudge_scoring_skipped_total", scorer=name, reason="budget")  # noqa: E731
            assert wait_until(lambda: all(scored(n) + skipped(n) == TRACES for n in ("safety", "relevance"))
                              and scored("no_error") == TRACES, timeout=30), sidecar.log_tail()  # fmt: skip
            metrics = sidecar.metrics()
            spent_gauge = lambda: sidecar.metric("tracejudge_judge_budget_spent", limit="tokens_per_hour")  # noqa: E731
            assert metrics.get("tracejudge_judge_budget_limit", limit="tokens_per_hour") == LIMIT
            requests = judge.chat_requests()
            assert wait_until(lambda: spent_gauge() > 0)
            log = sidecar.log()
        finally:
            assert sidecar.stop() == 0, sidecar.log_tail()
    archive = tmp_path / "tj" / "archive"
    judged = judged_tokens(archive)
    per_call = max(tokens for _, tokens in judged)
    spent = sum(tokens for _, tokens in judged)
    by_scorer = Counter(name for name, _ in judged)
    # The budget was used up, and passed by no more than what was in flight when it was reached.
    assert LIMIT - 2 * per_call <= spent <= LIMIT + 4 * per_call, (spent, per_call)
    assert len(requests) == len(judged)  # every judge call made is a verdict: none was paid for and dropped
    # Evenly across scorers: each kept about the same share of its pairs; the rest are recorded, never a gap.
    assert 0 < by_scorer["safety"] < TRACES and abs(by_scorer["safety"] - by_scorer["relevance"]) <= 2, by_scorer
    assert budget_skips(archive) == {name: TRACES - by_scorer[name] for name in ("safety", "relevance")}
    assert spent_gauge_value(tmp_path / "tj") == spent  # the ledger holds what the judge's usage said
    assert "judge budget tokens_per_hour reached" in log and "recorded as skipped (budget)" in log


def spent_gauge_value(data_dir: Path) -> float:
    budget = JudgeBudget(JudgeBudgetConfig(tokens_per_hour=LIMIT), data_dir / LEDGER_NAME)
    try:
        [state] = budget.states()
        return state.spent
    finally:
        budget.close()


SPENDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tracejudge.scoring.budget import JudgeBudget
    from tracejudge.scoring.config import JudgeBudgetConfig
    config = JudgeBudgetConfig(tokens_per_hour=10_000, cost_per_day=1.0,
                               prices={"gpt-4.1-mini": {"input": 0.4, "output": 1.6}})
    budget = JudgeBudget(config, Path(sys.argv[1]), sys.argv[2])
    for _ in range(int(sys.argv[3])):
        budget.spend("openai:/gpt-4.1-mini", 900, 100)
    budget.close()
""")


def test_processes_share_one_ledger_its_windows_slide_and_a_backfill_keeps_to_its_share(tmp_path: Path) -> None:
    ledger = tmp_path / LEDGER_NAME
    spenders = [subprocess.Popen([sys.executable, "-c", SPENDER, str(ledger), role, "3"])
                for role in ("live", "backfill", "live")]  # fmt: skip
    assert [p.wait(timeout=60) for p in spenders] == [0, 0, 0]
    config = JudgeBudgetConfig(tokens_per_hour=10_000, cost_per_day=1.0,
                               prices={"openai:/gpt-4.1-mini": {"input": 0.4, "output": 1.6}})  # fmt: skip
    now = time.time()
    live = JudgeBudget(config, ledger, "live", clock=lambda: now)
    states = {state.limit.name: state.spent for state in live.states()}
    assert states["tokens_per_hour"] == 9 * 1000
    assert states["cost_per_day"] == pytest.approx(9 * (900 * 0.4 + 100 * 1.6) / 1e6)

    async def two_pairs() -> tuple[bool, bool, bool]:
        """9,000 of 10,000 spent: one pair more fits (1,000 tokens a pair before one has finished); a second
        waits for it, and is refused once it has been paid for."""
        first = await live.admit()
        second = asyncio.create_task(live.admit())
        await asyncio.sleep(0.1)
        waited = not second.done()
        live.spend("openai:/gpt-4.1-mini", 900, 100)
        live.release()
        return first, waited, await asyncio.wait_for(second, 5)

    assert asyncio.run(two_pairs()) == (True, True, False)
    backfill = JudgeBudget(config, ledger, "backfill", clock=lambda: now)
    assert not asyncio.run(backfill.admit())  # past its 50 % share already
    assert "a backfill may use 50% of it; 0 tokens left" in backfill.describe()

    later = JudgeBudget(config, ledger, "backfill", clock=lambda: now + 61 * 60)
    assert {s.limit.name: s.spent for s in later.states()}["tokens_per_hour"] == 0  # the hour has slid past
    assert asyncio.run(later.admit())
    for budget in (live, backfill, later):
        budget.close()


def test_bad_budget_config_is_refused_naming_the_key(tmp_path: Path) -> None:
    def refused(budget: dict[str, Any], judges: dict[str, Any] | None = None) -> str:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"judges": {**(judges or {}), "budget": budget}}))
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        return str(caught.value)

    assert "judges.budget.tokens_per_hour" in refused({"tokens_per_hour": 0})
    assert "judges.budget.per_week" in refused({"per_week": 5})
    assert "need `prices`" in refused({"cost_per_day": 5})
    message = refused({"cost_per_day": 5, "prices": {"gpt-4o": {"input": 2.5, "output": 10}}},
                      {"default": {"model": "openai:/gpt-4.1"}})  # fmt: skip
    assert "no price for openai:/gpt-4.1" in message
    assert "set a limit" in refused({})
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"judges": {"default": {"model": "gpt-4.1"}, "budget": {
        "cost_per_day": 5, "prices": {"openai:/gpt-4.1": {"input": 2, "output": 8}}}}}))  # fmt: skip
    loaded = load_config(path)
    assert set(loaded.judges) == {"default"} and loaded.judge_budget is not None
    printed = CliRunner().invoke(main, ["check-config", str(path)])
    assert printed.exit_code == 0, printed.output
    assert yaml.safe_load(printed.output)["judges"]["budget"]["cost_per_day"] == 5  # as the file says it


CONVERSATIONS = {f"c{n}": [f"turn {n}.{t}: where is my parcel?" for t in range(2)] for n in range(8)}


def test_a_backfill_prices_its_estimate_keeps_to_its_share_and_judges_the_rest_when_run_again(
    tmp_path: Path,
) -> None:
    with MockOpenAI() as judge:
        judges = {"default": judge_config(judge)}
        safety = {"name": "safety", "builtin": "Safety", "sample_rate": 1.0}
        data = archived_conversations(tmp_path, CONVERSATIONS, {"judges": judges, "scorers": [safety]}, judge.base_url)
        traces = sum(len(turns) for turns in CONVERSATIONS.values())
        live = judged_tokens(data / "archive")
        assert len(live) == traces
        per_verdict = sum(tokens for _, tokens in live) / traces
        prices = {"gpt-4.1-mini": {"input": 2.0, "output": 8.0}}

        def backfill(limit: int) -> Any:
            """safety at a new version: live scoring's verdicts are of version 1, so every trace is to judge."""
            path = tmp_path / "c.yaml"
            budget = {"tokens_per_hour": limit, "prices": prices}
            path.write_text(yaml.safe_dump({"judges": {**judges, "budget": budget},
                                            "scorers": [{**safety, "version": 2}]}))  # fmt: skip
            return CliRunner().invoke(main, ["backfill", "--no-progress", "--archive", str(data), "--config", str(path),
                                             "--scorer", "safety=1", "--since", "1h", "--yes"],
                                      catch_exceptions=False)  # fmt: skip

        limit = int(per_verdict * 8)  # a backfill may use half: about 4 of the 16 traces' verdicts
        first = backfill(limit)
        assert first.exit_code == 0, first.output
        second = backfill(limit * 100)
        assert second.exit_code == 0, second.output
        # the same budget in a running sidecar: its backfill worker prices the job and charges the shared ledger
        budget = {"tokens_per_hour": limit * 100, "prices": prices}
        sidecar = SidecarProcess(data, [], {"judges": {**judges, "budget": budget},
                                            "scorers": [{**safety, "version": 3}]}).start()  # fmt: skip
        try:
            before = sidecar.metric("tracejudge_judge_budget_spent", limit="tokens_per_hour")
            in_sidecar = CliRunner().invoke(main, ["backfill", "--endpoint", sidecar.grpc_target, "--scorer",
                                                   "safety=1", "--since", "1h", "--yes", "--no-progress"])  # fmt: skip
            assert in_sidecar.exit_code == 0, in_sidecar.output
            tokens = int(in_sidecar.output.split("judge tokens ")[1].split(";")[0])
            assert wait_until(lambda: sidecar.metric("tracejudge_judge_budget_spent", limit="tokens_per_hour")
                              == before + tokens), sidecar.log_tail()  # fmt: skip
            status = get_json(f"{sidecar.admin_url}/api/status")[1]["health"]["scoring"]
            assert status["budget"]["tokens_per_hour"] == {"spent": before + tokens, "limit": limit * 100}
            with urllib.request.urlopen(f"{sidecar.admin_url}/", timeout=10) as response:
                page = response.read().decode()
            assert f"judge budget tokens_per_hour: {before + tokens:.0f} of {limit * 100}" in page
        finally:
            assert sidecar.stop() == 0, sidecar.log_tail()
    assert "at judges.budget.prices" in in_sidecar.output and "judges.budget tokens_per_hour" in in_sidecar.output
    assert f"safety: {traces} to judge" in in_sidecar.output and "judge cost" in in_sidecar.output
    # the estimate priced the job from the scorer's past verdicts: every pair, at its input and output prices
    v1 = query(data / "archive", "assessments", "SELECT judge_input_tokens, judge_output_tokens FROM t "
                                                "WHERE scorer_version = 1")  # fmt: skip
    cost = traces * sum(i * 2.0 + o * 8.0 for i, o in v1) / len(v1) / 1e6
    assert f"~{cost:,.4f} at judges.budget.prices" in first.output, first.output
    assert "judges.budget tokens_per_hour" in first.output and "a backfill may use 50% of it" in first.output
    # the first run kept to half the limit (passing it by at most what was in flight) and said what it skipped
    judged_first = int(first.output.split("verdicts: safety ")[1].split(";")[0])
    tokens_first = int(first.output.split("judge tokens ")[1].split(";")[0])
    skipped = traces - judged_first
    assert 0 < judged_first < traces and f"budget {skipped}" in first.output, first.output
    assert tokens_first <= limit / 2 + 4 * per_verdict * 1.5, (tokens_first, limit)
    assert "judge cost" in first.output
    # run again with room: only what the budget skipped is judged; every trace then has one version-2 verdict
    assert f"safety: {skipped} to judge ({judged_first} already scored)" in second.output, second.output
    v2 = query(data / "archive", "assessments", "SELECT trace_id FROM t WHERE scorer_version = 2")
    assert len(v2) == len({row[0] for row in v2}) == traces
    # the offline runs' spend was in the ledger before the sidecar started: one budget for every process
    assert before == tokens_first + int(second.output.split("judge tokens ")[1].split(";")[0])


def test_the_pairs_of_one_trace_never_wait_on_each_other(tmp_path: Path) -> None:
    """Near the limit the first judge pair of a trace fits and the second would only once the first is paid
    for: the second is refused at once (the first runs only when admission returns), a check always runs."""
    ledger = tmp_path / LEDGER_NAME
    config = JudgeBudgetConfig(tokens_per_hour=10_000)
    spender = JudgeBudget(config, ledger)
    spender.spend("openai:/gpt-4.1-mini", 8_500, 0)
    spender.close()
    code = CodeRunner(1, 1.0)
    pool = JudgePool({})
    scorers = [LoadedScorer(spec, build_evaluator(spec, pool.get, code), parse_filter(None))
               for spec in (ScorerSpec(name="safety", builtin="Safety"), ScorerSpec(name="relevance",
                            builtin="RelevanceToQuery"), ScorerSpec(name="no_error", builtin="NoError"))]  # fmt: skip
    budget = JudgeBudget(config, ledger)
    view = object()  # within_budget reads only the scorers
    kept, refused = asyncio.run(asyncio.wait_for(within_budget([(s, view) for s in scorers], budget), 5))
    assert [s.spec.name for s, _ in kept] == ["safety", "no_error"] and [s.spec.name for s, _ in refused] == [
        "relevance"
    ]
    code.shutdown()
    budget.close()


def test_an_apps_own_process_keeps_to_the_budget_in_its_data_dir(tmp_path: Path, monkeypatch: Any) -> None:
    """ScoringSpanProcessor reads judges.budget like the sidecar: a limit smaller than one pair lets no judge
    call out, the check still runs, and the spend ledger is in the config's data_dir."""
    sink = GrpcSink().start()
    try:
        with MockOpenAI() as judge:
            config = {"data_dir": str(tmp_path / "app-data"), "assembler": {"trace_idle": "200ms"},
                      "judges": {"default": judge_config(judge), "budget": {"tokens_per_hour": 10}},
                      "scorers": [{"name": "safety", "builtin": "Safety", "sample_rate": 1.0},
                                  {"name": "no_error", "builtin": "NoError", "sample_rate": 1.0}]}  # fmt: skip
            (tmp_path / "tracejudge.yaml").write_text(yaml.safe_dump(config))
            processor = ScoringSpanProcessor(config=tmp_path / "tracejudge.yaml", otlp_endpoint=sink.url)
            provider = app_provider(sink, processor)
            for _ in range(3):
                agent_turn(provider, "You get a full refund within 30 days.")
            assert provider.force_flush(10_000)
            verdicts = wait_until(lambda: len(found := evaluation_spans(sink)) >= 3 and found, timeout=20)
            provider.shutdown()
            calls = judge.chat_requests()
    finally:
        sink.stop()
    assert {s.name for s in verdicts} == {"evaluation no_error"} and calls == []
    assert (tmp_path / "app-data" / LEDGER_NAME).is_file()


def test_an_unreadable_ledger_is_set_aside_with_an_error_and_spend_counts_anew(tmp_path: Path, caplog: Any) -> None:
    ledger = tmp_path / LEDGER_NAME
    ledger.write_bytes(b"not a database, a file someone copied over it\n" * 100)
    budget = JudgeBudget(JudgeBudgetConfig(tokens_per_hour=10_000), ledger)
    budget.spend("openai:/gpt-4.1-mini", 300, 50)
    budget.flush()
    assert [state.spent for state in budget.states()] == [350]
    budget.close()
    [aside] = tmp_path.glob(f"{LEDGER_NAME}.unreadable-*")
    assert aside.read_bytes().startswith(b"not a database")
    assert "judge budget ledger" in caplog.text and "is unreadable" in caplog.text

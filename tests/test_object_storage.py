"""The archive on object storage: `archive.directory: s3://bucket/prefix` against a real S3 server (moto's, on
loopback). A real sidecar archives what a real OTel SDK exporter sends into the bucket; pyarrow, DuckDB (over a
pyarrow dataset: its httpfs extension downloads at run time) and `tracejudge evaluate` read it back; a store
that cannot be reached is reported, the sidecar keeps serving, and the write-ahead log keeps every acknowledged
span until the store takes it."""

from __future__ import annotations

import logging
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.dataset as ds
import pytest
import yaml
from click.testing import CliRunner
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tracejudge.cli import main
from tracejudge.config import ConfigError
from tracejudge.config_file import load_config
from tracejudge.exporter import rows
from tracejudge.exporter.archive_store import (
    ArchiveUploadError,
    S3Options,
    TablePlace,
    archive_filesystem,
    partition_files,
)
from tracejudge.exporter.feedback import FeedbackStore
from tracejudge.model import Assessment, AssessmentSourceType
from tracejudge.testing import SidecarProcess, free_port, wait_until

moto_server = pytest.importorskip("moto.server", reason="moto[server] (the test extras) runs the S3 server")
boto3 = pytest.importorskip("boto3")

BUCKET = "tj-archive"
PREFIX = "prod/eu"
URI = f"s3://{BUCKET}/{PREFIX}"
# Credentials come from the AWS environment, as for real S3 (moto accepts any); no instance metadata lookups.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip


class S3Server:
    """moto's S3 server on 127.0.0.1:`port`; it can be started later (nothing listens there until then), and
    stopped and started again on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._server: Any = None

    def start(self, reset: bool = True) -> S3Server:
        """`reset`: start with no buckets (moto keeps its state in this process, so a test would see the last
        one's); without, a restart keeps what the store held, as a real store does across an outage."""
        self._server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        if reset:
            request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
            urllib.request.urlopen(request, timeout=10).close()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip

    def keys(self, table: str) -> list[str]:
        listed = self.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{table}/")
        return [item["Key"] for item in listed.get("Contents", [])]


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = S3Server(free_port()).start()
    server.client().create_bucket(Bucket=BUCKET)
    try:
        yield server
    finally:
        server.stop()


def sidecar_config(endpoint: str) -> dict[str, Any]:
    return {"assembler": {"trace_idle": "200ms"},
            "archive": {"directory": URI, "s3": {"endpoint_override": endpoint, "connect_timeout": "1s",
                                                 "request_timeout": "5s", "retries": 2},
                        "roll_interval": "1s"}}  # fmt: skip


def send_chats(target: str, count: int, tag: str) -> set[str]:
    """`count` GenAI chat traces (a root and a model call each) through the OTel SDK's gRPC exporter; their span
    ids (hex). SimpleSpanProcessor exports each span as it ends: every one was acknowledged when this returns."""
    provider = TracerProvider(resource=Resource.create({"service.name": f"shop-{tag}"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=target, insecure=True)))
    tracer = provider.get_tracer("test_object_storage")
    sent = set()
    for i in range(count):
        question = f"[{tag}-{i}] What is the refund window?"
        answer = f"30 days ({tag}-{i})"
        with tracer.start_as_current_span("agent") as root:
            root.set_attribute("gen_ai.operation.name", "invoke_agent")
            with tracer.start_as_current_span("chat gpt-test") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.request.model", "gpt-test")
                chat.set_attribute("gen_ai.input.messages", orjson.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": question}]}]).decode())  # fmt: skip
                chat.set_attribute("gen_ai.output.messages", orjson.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]).decode())  # fmt: skip
                sent.add(format(chat.get_span_context().span_id, "016x"))
            sent.add(format(root.get_span_context().span_id, "016x"))
    provider.shutdown()
    return sent


def bucket_rows(endpoint: str, table: str, columns: list[str]) -> list[dict[str, Any]]:
    """The rows of one archive table in the bucket, read straight with pyarrow (no de-duplication)."""
    filesystem, root = archive_filesystem(URI, S3Options(endpoint_override=endpoint))
    schema = {"spans": rows.SPANS_SCHEMA, "assessments": rows.ASSESSMENTS_SCHEMA, "traces": rows.TRACES_SCHEMA}[table]
    try:
        dataset = ds.dataset(f"{root}/{table}", filesystem=filesystem, format="parquet", schema=schema)
    except (FileNotFoundError, OSError):  # no file yet, or the server not up yet
        return []
    return list(dataset.to_table(columns=columns).to_pylist())


def archived_span_ids(endpoint: str) -> list[str]:
    """Every span id in the bucket's `spans` files, as many times as the files hold it."""
    return [row["span_id"] for row in bucket_rows(endpoint, "spans", ["span_id"])]


class KeptEmitter:
    def __init__(self) -> None:
        self.emitted: list[Assessment] = []

    def emit(self, assessments: Sequence[Assessment]) -> None:
        self.emitted.extend(assessments)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Nothing to stop."""


def test_a_sidecar_archives_into_the_bucket_and_evaluate_reads_it_back(s3: S3Server, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sidecar = SidecarProcess(data_dir, [], sidecar_config(s3.endpoint), env=AWS_ENV).start()
    try:
        sent = send_chats(sidecar.grpc_target, 5, "a")
        assert wait_until(lambda: Counter(archived_span_ids(s3.endpoint)) == Counter(sent), 30, 0.3)
        assert wait_until(lambda: s3.keys("traces"), 15, 0.3)
    finally:
        assert sidecar.stop() == 0, sidecar.log_tail()
    assert Counter(archived_span_ids(s3.endpoint)) == Counter(sent)  # every span exactly once, after shutdown too
    keys = s3.keys("spans")
    assert keys and all(key.startswith(f"{PREFIX}/spans/date=") and "/hour=" in key for key in keys), keys
    assert all(not key.rsplit("/", 1)[1].startswith(".") for key in keys)  # no temporary object was ever uploaded
    assert not (data_dir / "archive").exists()  # nothing archived locally
    assert not [p for p in (data_dir / "archive-spool").rglob("*") if p.is_file()]  # every file uploaded

    # DuckDB over a pyarrow dataset of the bucket, as the README shows.
    filesystem, root = archive_filesystem(URI, S3Options(endpoint_override=s3.endpoint))
    connection = duckdb.connect()
    connection.register("spans", ds.dataset(f"{root}/spans", filesystem=filesystem, format="parquet",
                                            partitioning="hive"))  # fmt: skip
    counted = connection.sql("SELECT count(*), count(DISTINCT span_id), count(DISTINCT trace_id), min(hour) >= 0 "
                             "FROM spans WHERE name = 'chat gpt-test'").fetchall()  # fmt: skip
    assert counted == [(5, 5, 5, True)]

    # tracejudge evaluate --archive s3://... with archive.s3 from --config, no-model checks.
    config = tmp_path / "scorers.yaml"
    config.write_text(yaml.safe_dump({"archive": {"directory": URI, "s3": {"endpoint_override": s3.endpoint}},
                                      "scorers": [{"name": "non_empty", "builtin": "NonEmptyResponse"}]}))  # fmt: skip
    out = tmp_path / "results.jsonl"
    result = CliRunner().invoke(main, ["evaluate", "--archive", URI, "--config", str(config), "--since", "1h",
                                       "--out", str(out)], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    verdicts = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(verdicts) == 5 and {v["value"] for v in verdicts} == {"true"}
    assert {v["response"] for v in verdicts} == {f"30 days (a-{i})" for i in range(5)}

    # The URI's query string sets the same options, validated the same way (the Python API, no config).
    import tracejudge

    by_query = tracejudge.ArchivedTraces(f"{URI}?endpoint_override={s3.endpoint}", since="1h")
    again = tracejudge.evaluate(by_query, [{"name": "non_empty", "builtin": "NonEmptyResponse", "sample_rate": 1}])
    assert sorted(a.trace_id for a in again.assessments) == sorted(v["trace_id"] for v in verdicts)

    # Offline backfill over the bucket (the config says where the archive is): verdicts land in the bucket once.
    def backfill() -> Any:
        return CliRunner().invoke(main, ["backfill", "--no-progress", "--archive", str(data_dir), "--config",
                                         str(config), "--scorer", "non_empty=1", "--since", "1h", "--yes"])  # fmt: skip

    first = backfill()
    assert first.exit_code == 0, first.output
    backfilled = bucket_rows(s3.endpoint, "assessments", ["trace_id", "name", "value", "metadata"])
    assert sorted(r["trace_id"] for r in backfilled) == sorted(v["trace_id"] for v in verdicts)
    assert all(r["value"] == "true" and "backfill_job" in r["metadata"] for r in backfilled)
    second = backfill()
    assert second.exit_code == 0 and "already scored" in second.output, second.output
    assert len(bucket_rows(s3.endpoint, "assessments", ["trace_id"])) == 5  # nothing added

    # Human feedback on an archived trace finds its root span in the bucket.
    roots = {r["trace_id"]: r["span_id"] for r in bucket_rows(s3.endpoint, "spans", ["trace_id", "span_id", "name"])
             if r["name"] == "agent"}  # fmt: skip
    trace_id, root_span = sorted(roots.items())[0]
    kept = KeptEmitter()
    store = FeedbackStore(None, kept, URI, archive_s3=S3Options(endpoint_override=s3.endpoint))
    stored = store.log(Assessment(name="thumbs", trace_id=trace_id, span_id="", value=True,
                                  source=AssessmentSourceType.HUMAN, source_id="user-42"))  # fmt: skip
    assert stored.span_id == root_span and kept.emitted == [stored]
    assert {a.name for a, valid in store.assessments(trace_id) if valid} == {"thumbs", "non_empty"}


def test_a_store_that_cannot_be_reached_is_reported_the_sidecar_keeps_serving_and_the_log_keeps_the_spans(
    tmp_path: Path,
) -> None:
    s3 = S3Server(free_port())  # nothing listens there yet
    data_dir = tmp_path / "data"
    sidecar = SidecarProcess(data_dir, [], sidecar_config(s3.endpoint), env=AWS_ENV).start()
    try:
        # Down from the start: the writer says so and waits; spans are acknowledged and kept in the log.
        early = send_chats(sidecar.grpc_target, 3, "early")  # SimpleSpanProcessor: each export acknowledged
        assert wait_until(lambda: f"cannot reach {URI}" in sidecar.log(), 30, 0.2), sidecar.log_tail()
        assert "127.0.0.1" in sidecar.log()  # the store's own error names the endpoint it tried
        # A stop meanwhile does not wait for the store (the feeder's flush would wait roll_interval + 30 s;
        # stop() raises past 25 s), and the next start archives what the log kept.
        assert sidecar.stop(timeout=25) == 0, sidecar.log_tail()
        assert "the object store is away" in sidecar.log()
        sidecar = SidecarProcess(data_dir, [], sidecar_config(s3.endpoint), env=AWS_ENV).start()
        s3.start()
        s3.client().create_bucket(Bucket=BUCKET)
        assert wait_until(lambda: Counter(archived_span_ids(s3.endpoint)) == Counter(early), 40, 0.3), (
            sidecar.log_tail()
        )
        assert wait_until(lambda: len(bucket_rows(s3.endpoint, "traces", ["trace_id"])) == 3, 30, 0.3)

        # Gone mid-run: the upload fails, the writer says why and starts again; the sidecar keeps serving.
        s3.stop()
        late = send_chats(sidecar.grpc_target, 3, "late")
        assert wait_until(lambda: "could not upload" in sidecar.log(), 30, 0.2), sidecar.log_tail()
        logged = sidecar.log()
        assert f"to {URI}/spans" in logged and "written again from the write-ahead log" in logged
        assert wait_until(lambda: sidecar.metric("tracejudge_archive_worker_restarts_total") >= 1, 15, 0.2)
        sidecar.check_alive()
        more = send_chats(sidecar.grpc_target, 2, "more")  # still accepted while the store is away

        s3.start(reset=False)  # back, with the bucket and what it held
        wanted = Counter(early | late | more)
        assert wait_until(lambda: Counter(archived_span_ids(s3.endpoint)) == wanted, 60, 0.3), sidecar.log_tail()
        assert sidecar.stop() == 0, sidecar.log_tail()
        assert Counter(archived_span_ids(s3.endpoint)) == wanted  # each exactly once, none lost
    finally:
        sidecar.kill()
        s3.stop()


def test_evaluate_over_an_unreachable_store_is_one_clear_error(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"archive": {"directory": URI, "s3": {"endpoint_override": dead, "retries": 1}},
                                      "scorers": [{"name": "non_empty", "builtin": "NonEmptyResponse"}]}))  # fmt: skip
    result = CliRunner().invoke(main, ["evaluate", "--archive", URI, "--config", str(config), "--since", "1h"])
    assert result.exit_code == 1, result.output
    assert f"cannot read the archive at {URI}" in result.output and "connect" in result.output.lower()
    assert "Traceback" not in result.output


def test_archive_directory_takes_a_path_as_before_or_a_validated_uri(tmp_path: Path) -> None:
    plain = load_config(None, {"archive.directory": str(tmp_path / "arch")})
    assert plain.archive.directory == tmp_path / "arch" and isinstance(plain.archive_dir, Path)
    assert load_config(None, {"data_dir": str(tmp_path)}).archive_dir == tmp_path / "archive"

    on_s3 = load_config(None, {"archive.directory": URI, "archive.s3.endpoint_override": "https://minio:9000",
                               "archive.s3.region": "eu-west-1"})  # fmt: skip
    assert on_s3.archive_dir == URI  # text: a Path would fold s3:// into s3:/
    assert on_s3.archive.s3 is not None
    arguments = on_s3.archive.s3.filesystem_arguments()
    assert (arguments["endpoint_override"], arguments["scheme"], arguments["region"]) == ("minio:9000", "https",
                                                                                          "eu-west-1")  # fmt: skip
    _, root = archive_filesystem(URI, on_s3.archive.s3)
    assert root == f"{BUCKET}/{PREFIX}"

    bad = {
        "s3://": "give a path, or a URI",
        "s3:///no-bucket": "give a path, or a URI",
        "gs://bucket/prefix": "object storage is s3://",
        f"{URI}?endpoint_overide=127.0.0.1:1": "endpoint_overide",  # a misspelt option in the URI, named
        f"{URI}?retries=0": "retries",
    }
    for directory, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, {"archive.directory": directory})
    with pytest.raises(ConfigError, match=r"archive\.s3 is set but archive\.directory is no s3:// URI"):
        load_config(None, {"archive.directory": str(tmp_path), "archive.s3.region": "eu-west-1"})
    with pytest.raises(ConfigError, match=r"archive\.s3\.endpoint_override.*host:port"):
        load_config(None, {"archive.directory": URI, "archive.s3.endpoint_override": "ftp://x:1"})
    with pytest.raises(ConfigError, match="endpoint_overide"):  # a misspelt option in the URI is named
        archive_filesystem(f"{URI}?endpoint_overide=127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"\['region'\] set both"):
        archive_filesystem(f"{URI}?region=eu-west-1", S3Options(region="us-east-1"))


def test_partition_files_lists_only_the_hours_in_range_and_no_open_file(tmp_path: Path) -> None:
    """The listing backfill uses (and a Ray reader can): the same on local disk as on a bucket."""
    table = tmp_path / "assessments"
    for hour in ("date=2026-12-01/hour=22", "date=2026-12-01/hour=23", "date=2026-12-02/hour=00",
                 "date=2026-12-02/hour=01", "date=2026-12-03/hour=00"):  # fmt: skip
        (table / hour).mkdir(parents=True)
        (table / hour / "part-1.parquet").write_bytes(b"")
        (table / hour / ".part-2.parquet.tmp").write_bytes(b"")  # a writer's open file
    filesystem, root = archive_filesystem(tmp_path)
    listed = partition_files(filesystem, f"{root}/assessments", "date=2026-12-01/hour=23", "date=2026-12-02/hour=00")
    assert [Path(f).relative_to(table).as_posix() for f in listed] == [
        "date=2026-12-01/hour=23/part-1.parquet", "date=2026-12-02/hour=00/part-1.parquet"]  # fmt: skip
    assert len(partition_files(filesystem, f"{root}/assessments")) == 5
    assert partition_files(filesystem, f"{root}/nothing-here") == []


def test_a_failed_upload_raises_and_keeps_the_file_and_a_good_one_lands_whole(s3: S3Server, tmp_path: Path) -> None:
    """The writer counts a file as closed only when publish returns: a failure must raise, never be swallowed
    (pyarrow's copy_files only prints a PutObject that fails at close)."""
    dead = TablePlace.of(URI, "spans", S3Options(endpoint_override=f"http://127.0.0.1:{free_port()}", retries=1),
                         tmp_path / "spool")  # fmt: skip
    temp = tmp_path / "spool" / "spans" / ".part-1.parquet.tmp"
    temp.parent.mkdir(parents=True)
    temp.write_bytes(b"PAR1 not really")
    with pytest.raises(ArchiveUploadError, match=rf"could not upload date=x/part-1.parquet to {URI}/spans"):
        dead.publish(temp, "date=x", "part-1.parquet")
    assert temp.exists()  # kept: its rows are not in the archive

    live = TablePlace.of(URI, "spans", S3Options(endpoint_override=s3.endpoint), tmp_path / "spool")
    live.publish(temp, "date=x", "part-1.parquet")
    assert not temp.exists()
    body = s3.client().get_object(Bucket=BUCKET, Key=f"{PREFIX}/spans/date=x/part-1.parquet")["Body"].read()
    assert body == b"PAR1 not really"

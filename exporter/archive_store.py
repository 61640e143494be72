"""Where the archive lives: a local directory or object storage, seen as one pyarrow filesystem and a root path.

`archive.directory` is a path (`./data/archive`) or a URI (`s3://bucket/prefix`, or any scheme pyarrow.fs
knows: gs://, hdfs://, file://). Everything that writes or reads archive files asks this module for
`(filesystem, root)` -- `archive_filesystem` -- instead of testing for "s3://" itself, so local disk and
object storage take the same code paths: pyarrow.dataset over the filesystem to read, `publish` to make a
closed file part of the archive.

Writing to object storage: files are written on local disk (a spool directory) exactly as for a local
archive, and `publish` uploads each once it is closed; only then is the file "closed" for the write-ahead
log's archive cursor. One PUT (a file under one part, ~5-10 MB) or a multipart upload (larger ones), which
S3 makes visible only when it completes, is atomic per object, so a reader never sees a torn file. Writing
straight to a temporary key and copying it to the final one instead would cost a second request and the
traffic of a server-side copy, and S3 has no rename that could make that step atomic.

Object storage options come from `archive.s3` (S3Options) or from the URI's query string
(`s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http`), validated the same way; credentials
come from the usual AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, profiles),
never from tracejudge's config. pyarrow is imported only when a filesystem is made: the sidecar's own
process does not otherwise load it (tests/test_architecture.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, ValidationError, field_validator

from tracejudge.config import ConfigError, Duration, StrictConfig, format_errors

if TYPE_CHECKING:
    import pyarrow.fs as pafs

_UPLOAD_CHUNK = 4 * 2**20

__all__ = ["ArchiveUnavailable", "ArchiveUploadError", "S3Options", "TablePlace", "archive_filesystem", "is_uri",
           "location_text", "partition_files", "s3_options", "store_problem"]  # fmt: skip


class S3Options(StrictConfig):
    """`archive.s3`: how to reach an S3 or S3-compatible store (MinIO, Ceph, R2, moto). Credentials: AWS env."""

    # host:port or http(s)://host:port of an S3-compatible store; http:// implies scheme http.
    endpoint_override: str | None = None
    region: str | None = None  # the bucket's region [AWS_DEFAULT_REGION, else the AWS SDK's own lookup]
    scheme: Literal["https", "http"] | None = None  # [https, or endpoint_override's scheme]
    anonymous: bool = False  # unsigned requests (a public bucket); no credentials looked up
    connect_timeout: Duration = 5.0
    request_timeout: Duration = 30.0
    retries: int = Field(default=3, ge=1, le=20)  # attempts per request (AWS standard retry strategy)

    @field_validator("endpoint_override")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value if "://" in value else f"//{value}")
        if parts.scheme not in ("", "http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"{value!r}: give host:port or http(s)://host:port, with no path")
        try:
            parts.port  # noqa: B018 - raises on a port that is no number
        except ValueError:
            raise ValueError(f"{value!r}: the port is not a number") from None
        return value.rstrip("/")

    def filesystem_arguments(self) -> dict[str, Any]:
        """Keyword arguments for pyarrow.fs.S3FileSystem."""
        arguments: dict[str, Any] = {"anonymous": self.anonymous, "connect_timeout": self.connect_timeout,
                                     "request_timeout": self.request_timeout}  # fmt: skip
        scheme = self.scheme
        if self.endpoint_override is not None:
            given, _, host = self.endpoint_override.rpartition("://")
            arguments["endpoint_override"] = host
            scheme = scheme or (given or None)  # type: ignore[assignment]
        if scheme is not None:
            arguments["scheme"] = scheme
        if self.region is not None:
            arguments["region"] = self.region
        return arguments


class ArchiveUploadError(OSError):
    """A closed file could not be made part of the archive (object storage unreachable, refused, bad bucket)."""


class ArchiveUnavailable(OSError):
    """The archive could not be read (object storage unreachable, credentials refused, no such bucket)."""


def is_uri(location: str | Path) -> bool:
    """Whether `archive.directory` names object storage (or another pyarrow filesystem) rather than a path."""
    return isinstance(location, str) and "://" in location


def location_text(location: str | Path) -> str:
    """The location for messages: a URI without its query string (where options, never secrets, live)."""
    return str(location).split("?", 1)[0] if is_uri(location) else str(location)


def archive_filesystem(location: str | Path, s3: S3Options | None = None) -> tuple[pafs.FileSystem, str]:
    """`archive.directory` as (pyarrow filesystem, root path on it): the one place a location is interpreted.

    A path is the local filesystem and the absolute path. `s3://bucket/prefix` is an S3FileSystem made from
    `s3` (archive.s3) and the URI's query string (either, not both, may set an option); any other URI is
    pyarrow.fs.FileSystem.from_uri's. Bad options raise ConfigError naming them."""
    import pyarrow.fs as pafs

    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).resolve())
    text = str(location)
    parts = urlsplit(text)
    if parts.scheme != "s3":
        try:
            filesystem, path = pafs.FileSystem.from_uri(text)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"archive.directory {location_text(text)}: {exc}") from exc
        return filesystem, path.rstrip("/")
    if not parts.netloc:
        raise ConfigError(f"archive.directory {location_text(text)}: no bucket; give s3://bucket/prefix")
    options = s3_options(s3, text)
    retries = pafs.AwsStandardS3RetryStrategy(max_attempts=options.retries)
    # allow_delayed_open: a file smaller than one part (archive files mostly are) goes up in one PutObject,
    # not the three requests of a multipart upload (measured against moto), and never leaves an incomplete
    # multipart upload behind (billed until a lifecycle rule aborts it) when a writer is killed mid-upload.
    filesystem = pafs.S3FileSystem(**options.filesystem_arguments(), retry_strategy=retries, allow_delayed_open=True)
    return filesystem, f"{parts.netloc}{parts.path}".rstrip("/")


def store_problem(location: str | Path, s3: S3Options | None = None) -> str | None:
    """Why the archive at `location` cannot take files now (unreachable, credentials refused, no such bucket),
    or None when it can (always, for a local archive). One or two requests: the writer asks before it starts."""
    if not is_uri(location):
        return None
    import pyarrow.fs as pafs

    filesystem, root = archive_filesystem(location, s3)
    bucket = root.split("/", 1)[0]
    try:
        on_s3 = isinstance(filesystem, pafs.S3FileSystem)
        if on_s3 and filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
            return f"cannot write to {location_text(location)}: bucket {bucket!r} does not exist"
        filesystem.get_file_info(root)
    except OSError as exc:
        return f"cannot reach {location_text(location)}: {exc}"
    return None


def partition_files(filesystem: pafs.FileSystem, directory: str, low: str = "", high: str = "~") -> list[str]:
    """The closed Parquet files of one table (`directory`: `<root>/<table>` on `filesystem`) in the hour
    partitions from `low` to `high` (`date=YYYY-MM-DD/hour=HH`, inclusive; the defaults leave either end open).
    Only the date directories and the hours of the dates in range are listed, not every file of the table;
    hidden files (a writer's open `.tmp` ones) are left out."""
    import pyarrow.fs as pafs

    def listed(path: str) -> list[pafs.FileInfo]:
        return sorted(filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True)), key=lambda i: i.path)

    files = []
    for day in listed(directory):
        if day.type != pafs.FileType.Directory or not low[:15] <= day.base_name <= high[:15]:
            continue
        for hour in listed(day.path):
            if hour.type == pafs.FileType.Directory and low <= f"{day.base_name}/{hour.base_name}" <= high:
                files += [f.path for f in listed(hour.path) if f.type == pafs.FileType.File
                          and f.base_name.endswith(".parquet") and not f.base_name.startswith(".")]  # fmt: skip
    return files


def s3_options(s3: S3Options | None, text: str) -> S3Options:
    """The options of an s3:// URI: `s3` (archive.s3) with its query string's; ConfigError naming a bad one."""
    given = dict(parse_qsl(urlsplit(text).query, keep_blank_values=True))
    if not given:
        return s3 or S3Options()
    both = sorted(given.keys() & (s3.model_fields_set if s3 is not None else set()))
    if both:
        raise ConfigError(f"archive.directory {location_text(text)}: {both} set both in archive.s3 and the URI")
    try:
        return S3Options.model_validate({**(s3.model_dump(exclude_unset=True) if s3 else {}), **given})
    except ValidationError as exc:
        raise ConfigError(f"archive.directory {location_text(text)} query string: {format_errors(exc)}") from exc


@dataclass(frozen=True)
class TablePlace:
    """One archive table's files: `local` is the directory they are written in while open (hidden `.tmp`
    names); `publish` makes a closed one part of the archive, under `<table>/<partition>/<name>`.

    A local archive writes in the table's own directory and publishes by rename. Object storage writes in
    a spool directory and publishes by upload, then removes the local file."""

    local: Path
    filesystem: Any = None  # a pyarrow filesystem for object storage; None: `local` is the archive itself
    remote: str = ""  # the table's directory on `filesystem`
    shown: str = ""  # the table's location for messages

    @classmethod
    def of(cls, location: str | Path, table: str, s3: S3Options | None = None, spool: Path | None = None
           ) -> TablePlace:  # fmt: skip
        """`table` of the archive at `location`; `spool` (needed for object storage) holds its open files."""
        if not is_uri(location):
            return cls(Path(location) / table)
        if spool is None:
            raise ValueError(f"{location_text(location)}: writing to object storage needs a local spool directory")
        filesystem, root = archive_filesystem(location, s3)
        return cls(spool / table, filesystem, f"{root}/{table}", f"{location_text(location).rstrip('/')}/{table}")

    def publish(self, temp: Path, partition: str, name: str) -> None:
        """The closed file `temp` becomes `<partition>/<name>` of the table (atomically, for readers)."""
        if self.filesystem is None:
            os.replace(temp, self.local / partition / name)
            return
        target = f"{self.remote}/{partition}/{name}"
        try:
            # Not pyarrow.fs.copy_files: it closes the stream in a destructor, where a failed PutObject (made at
            # close, with allow_delayed_open) is only printed, and the file would count as uploaded.
            out = self.filesystem.open_output_stream(target)
            try:
                with temp.open("rb") as source:
                    while chunk := source.read(_UPLOAD_CHUNK):
                        out.write(chunk)
            finally:
                out.close()  # the upload completes (or fails, raising) here
        except OSError as exc:
            raise ArchiveUploadError(f"could not upload {partition}/{name} to {self.shown}: {exc}") from exc
        temp.unlink()

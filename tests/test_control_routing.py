"""The control plane's generic adapters: HTTP routing from google.api.http rules, the body limits of the shared
reader, and a service the adapters have never seen (declared here as a descriptor) served with no transport
code. Real gRPC and aiohttp servers on loopback."""

from __future__ import annotations

import dataclasses
import gzip
import json
import tracemalloc
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.message import Message
from test_control_plane import TOKEN, make_registry

from tracejudge import control, schema
from tracejudge.aio import AiohttpServerThread
from tracejudge.client.errors import InvalidScorerError
from tracejudge.client.grpc_transport import GrpcTransport
from tracejudge.client.http_transport import HttpTransport
from tracejudge.control.plane import ControlPlane
from tracejudge.proto import scorers_pb2 as pb
from tracejudge.schema import SCORER_SERVICE


@dataclass
class Served:
    grpc_target: str
    http_url: str


@contextmanager
def serving(plane: ControlPlane) -> Iterator[Served]:
    """The plane on a gRPC server and an aiohttp app configured as the OTLP/HTTP receiver's (no auto-inflate)."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(control.grpc_handlers(plane))
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    app = web.Application()
    app.add_routes(control.http_routes(plane))
    http = AiohttpServerThread(app, "127.0.0.1", 0, "control-http", auto_decompress=False)
    http_port = http.start()
    try:
        yield Served(f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}")
    finally:
        # After a body refused unread, aiohttp may linger up to its lingering_time (10 s) reading it, even once
        # the client has closed (aio-libs/aiohttp#1800), and cleanup waits for that: allow it here.
        http.shutdown(15)
        server.stop(None).wait(5)


def send(
    method: str, url: str, data: bytes | Iterable[bytes] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:  # closes the connection now, not when the error is collected
            return exc.code, exc.read()


@pytest.fixture
def scorers(tmp_path: Path) -> Iterator[tuple[Served, Any]]:
    registry = make_registry(tmp_path / "scorers.json")
    with serving(ControlPlane({SCORER_SERVICE: control.ScorerService(registry)})) as served:
        yield served, registry


# --------------------------------------------------------------------------------------------- routing


def test_an_unknown_action_is_404_with_a_status_naming_the_methods(scorers: tuple[Served, Any]) -> None:
    served, _ = scorers
    status, body = send("POST", f"{served.http_url}/v1/scorers/latency:pause")
    error = json.loads(body)
    assert (status, error["code"]) == (404, schema.status_code("NOT_FOUND"))
    assert error["message"].startswith("no method at POST /v1/scorers/latency:pause; under /v1/scorers there are: ")
    for method in SCORER_SERVICE.methods:
        assert f"{method.name} ({method.http[0].describe()})" in error["message"]
    for verb, path in [("PUT", "/v1/scorers"), ("GET", "/v1/scorers/a/b"), ("POST", "/v1/scorers:purge")]:
        status, body = send(verb, served.http_url + path, b"" if verb != "GET" else None)
        assert status == 404 and json.loads(body)["code"] == 5, (verb, path)
    status, body = send("GET", f"{served.http_url}/v1/scorersx")  # not under the prefix: not ours to answer
    assert status == 404 and not body.startswith(b"{")


def test_a_method_is_reachable_only_through_its_annotated_rule(scorers: tuple[Served, Any]) -> None:
    served, registry = scorers
    base = f"{served.http_url}/v1/scorers"
    assert send("POST", base, json.dumps({"name": "x", "builtin": "NoError"}).encode())[0] == 200
    assert send("POST", f"{base}/x:start", json.dumps({"sample_rate": 1.0}).encode())[0] == 200
    for verb, path in [("GET", "/x:stop"), ("POST", "/x/stop"), ("POST", "/x:Stop"), ("DELETE", "/x:stop")]:
        status, body = send(verb, base + path, None)
        assert (status, json.loads(body)["code"]) == (404, 5), (verb, path)
        assert registry.get("x").sample_rate == 1.0  # nothing reached StopScorer
    status, body = send("POST", f"{base}/x:stop", b"")  # the rule: POST /v1/scorers/{name}:stop
    assert status == 200 and json.loads(body)["status"] == "SCORER_STATUS_STOPPED"
    assert registry.get("x").sample_rate == 0.0


def test_a_service_object_must_have_every_rpc() -> None:
    class Partial:
        def list_scorers(self, request: Message) -> Message:
            return pb.ListScorersResponse()

    with pytest.raises(TypeError, match=r"Partial cannot serve tracejudge\.v1\.ScorerService: it has no register_"):
        ControlPlane({SCORER_SERVICE: Partial()})


# --------------------------------------------------------------------------------------------- body limits


def register_body(name: str = "x") -> bytes:
    return json.dumps({"name": name, "builtin": "NoError"}).encode()


def test_the_control_plane_refuses_bodies_over_its_limit(scorers: tuple[Served, Any]) -> None:
    served, registry = scorers
    url = f"{served.http_url}/v1/scorers"
    limit = control.http_adapter.MAX_BODY
    padded = register_body()[:-1] + b"," + b'"x": 0,' * 200_000 + b'"y": 0}'
    assert len(padded) > limit
    status, body = send("POST", url, padded, {"Content-Type": "application/json"})
    assert status == 413 and json.loads(body) == {
        "code": schema.status_code("RESOURCE_EXHAUSTED"),
        "message": f"body of {len(padded)} bytes exceeds the limit of {limit}",
    }
    chunks = (padded[i : i + 65536] for i in range(0, len(padded), 65536))  # chunked: no Content-Length to trust
    status, body = send("POST", url, chunks, {"Content-Type": "application/json"})
    assert (
        status == 413
        and json.loads(body)["message"] == f"body exceeds the limit of {control.http_adapter.MAX_BODY} bytes"
    )
    assert registry.all() == []

    status, body = send("POST", url, b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"})
    assert (status, json.loads(body)["code"]) == (400, 3) and "not valid gzip" in json.loads(body)["message"]
    status, body = send("POST", url, register_body(), {"Content-Encoding": "br"})
    assert status == 400 and "unsupported Content-Encoding 'br'" in json.loads(body)["message"]
    status, _ = send("POST", url, gzip.compress(register_body()), {"Content-Encoding": "gzip"})
    assert status == 200 and [spec.name for spec in registry.all()] == ["x"]


def test_a_gzip_bomb_is_refused_without_inflating_it(scorers: tuple[Served, Any]) -> None:
    served, registry = scorers
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = b"\x00" * (1 << 20)
    bomb = b"".join(deflate.compress(zeros) for _ in range(256)) + deflate.flush()  # 256 MiB inflated
    assert len(bomb) < control.http_adapter.MAX_BODY
    tracemalloc.start()
    try:
        status, body = send("POST", f"{served.http_url}/v1/scorers", bomb, {"Content-Encoding": "gzip"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413 and json.loads(body)["message"].startswith("decompressed body exceeds the limit")
    assert peak < 32 << 20  # inflating it whole would have taken 256 MiB
    assert registry.all() == []


def test_an_unauthenticated_caller_body_is_not_read(tmp_path: Path) -> None:
    plane = ControlPlane({SCORER_SERVICE: control.ScorerService(make_registry(tmp_path / "s.json"))}, TOKEN)
    with serving(plane) as served:
        too_big = b"{" + b" " * (2 << 20) + b"}"
        status, body = send("POST", f"{served.http_url}/v1/scorers", too_big)
        assert (status, json.loads(body)["code"]) == (401, schema.status_code("UNAUTHENTICATED"))


# --------------------------------------------------------------------------------------------- a new service


def widget_service() -> schema.Service:
    """A service declared the way the .proto declares one: messages, an RPC and its HTTP rules (a custom verb
    with the whole request as body; an extra GET binding filling fields from the path and the query string,
    answering with one field of the response)."""
    name = "tracejudge_test/widgets.proto"
    pool = descriptor_pool.Default()
    try:
        return schema.services_of(pool.FindFileByName(name))["tracejudge.test.WidgetService"]
    except KeyError:
        pass
    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name=name, package="tracejudge.test", syntax="proto3", dependency=["google/api/annotations.proto"]
    )
    widget = file.message_type.add(name="Widget")
    widget.field.add(name="id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    widget.field.add(name="size", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    widget.field.add(name="label", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    request = file.message_type.add(name="PokeWidgetRequest")
    request.field.add(
        name="widget", number=1, type=F.TYPE_MESSAGE, type_name=".tracejudge.test.Widget", label=F.LABEL_OPTIONAL
    )
    request.field.add(name="shelf", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    request.field.add(name="times", number=3, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    request.field.add(name="loud", number=4, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    request.field.add(name="tags", number=5, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    response = file.message_type.add(name="PokeWidgetResponse")
    response.field.add(
        name="widget", number=1, type=F.TYPE_MESSAGE, type_name=".tracejudge.test.Widget", label=F.LABEL_OPTIONAL
    )
    response.field.add(name="pokes", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    method = file.service.add(name="WidgetService").method.add(
        name="PokeWidget",
        input_type=".tracejudge.test.PokeWidgetRequest",
        output_type=".tracejudge.test.PokeWidgetResponse",
    )
    rule = method.options.Extensions[annotations_pb2.http]
    rule.post, rule.body = "/v1/widgets/{widget.id}:poke", "*"
    extra = rule.additional_bindings.add()
    extra.get, extra.response_body = "/v1/shelves/{shelf}/widgets/{widget.id}", "widget"
    pool.AddSerializedFile(file.SerializeToString())
    return schema.services_of(pool.FindFileByName(name))["tracejudge.test.WidgetService"]


class Widgets:
    """Its service object: one method, no transport code."""

    def __init__(self) -> None:
        self.pokes = 0

    def poke_widget(self, request: Any) -> Message:
        self.pokes += 1
        method = widget_service().method("PokeWidget")
        label = f"{request.shelf}:{request.loud}:{'+'.join(request.tags)}"
        widget = {"id": request.widget.id, "size": request.widget.size + request.times, "label": label}
        return method.response(widget=widget, pokes=self.pokes)


def test_a_new_service_is_served_from_its_descriptor_alone() -> None:
    service = widget_service()
    poke = service.method("PokeWidget")
    assert [rule.describe() for rule in poke.http] == [
        "POST /v1/widgets/{widget.id}:poke",
        "GET /v1/shelves/{shelf}/widgets/{widget.id}",
    ]
    with serving(ControlPlane({service: Widgets()})) as served:
        body = json.dumps({"widget": {"size": 2}, "times": 3, "loud": True, "tags": ["a"]}).encode()
        status, answer = send("POST", f"{served.http_url}/v1/widgets/w%2F1:poke", body)  # '/' in a value: encoded
        assert status == 200, answer
        assert json.loads(answer) == {"widget": {"id": "w/1", "size": 5, "label": ":True:a"}, "pokes": 1}

        query = "times=4&loud=true&tags=a&tags=b"
        status, answer = send("GET", f"{served.http_url}/v1/shelves/s1/widgets/w1?{query}")
        assert (status, json.loads(answer)) == (200, {"id": "w1", "size": 4, "label": "s1:True:a+b"})

        status, answer = send("GET", f"{served.http_url}/v1/shelves/s1/widgets/w1?colour=red")
        assert status == 400 and "has no field 'colour'" in json.loads(answer)["message"]
        status, answer = send("POST", f"{served.http_url}/v1/widgets/w1/poke", body)
        assert status == 404 and "PokeWidget (POST /v1/widgets/{widget.id}:poke)" in json.loads(answer)["message"]

        with grpc.insecure_channel(served.grpc_target) as channel:
            call = channel.unary_unary(
                poke.grpc_path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=poke.response.FromString,
            )
            reply = call(poke.request(widget={"id": "w2", "size": 1}, times=1), timeout=10)
        assert (reply.widget.id, reply.widget.size, reply.pokes) == ("w2", 2, 3)


def test_the_client_transports_call_a_new_service_from_its_descriptor() -> None:
    """The users' client transports are generic too: the new RPC is called over gRPC, over its primary HTTP rule
    (custom verb, body '*') and over its GET binding (query string, response_body), with no code of its own."""
    service = widget_service()
    poke = service.method("PokeWidget")
    request = poke.request(widget={"id": "w/1", "size": 2}, shelf="s", times=3, loud=True, tags=["a", "b"])
    with serving(ControlPlane({service: Widgets()})) as served:
        over_grpc = GrpcTransport(served.grpc_target, None, None, 10).call(poke, request)
        over_http = HttpTransport(served.http_url, None, 10).call(poke, request)
        by_get = HttpTransport(served.http_url, None, 10).call(dataclasses.replace(poke, http=poke.http[1:]), request)
    widget = {"id": "w/1", "size": 5, "label": "s:True:a+b"}
    assert json_format.MessageToDict(over_grpc) == {"widget": widget, "pokes": 1}
    assert json_format.MessageToDict(over_http) == {"widget": widget, "pokes": 2}
    assert json_format.MessageToDict(by_get) == {"widget": widget}  # widget.size=2&times=3&... in the query string
    with pytest.raises(InvalidScorerError, match=r"PokeWidget needs widget\.id \(it is part of the URL\)"):
        HttpTransport("http://127.0.0.1:9", None, 10).call(poke, poke.request())

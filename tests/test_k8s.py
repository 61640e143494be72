"""The Kubernetes manifests (deploy/k8s), rendered by `kubectl kustomize` and validated strictly against
the Kubernetes schemas (kubernetes-validate), then read as a cluster would: the names, ports, paths and
configs that must agree across objects, and with the image (deploy/Dockerfile), do agree.

Without kubectl: skipped on a developer's machine, a failure under CI (the machine image ships kubectl
with its built-in kustomize; .ci/install-deploy.sh reports when it is missing).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
# Native sidecars are on by default from 1.29; validate against that and the newest schemas bundled.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")


def kubectl_or_skip() -> None:
    if shutil.which("kubectl") is None:
        reason = "needs kubectl with kustomize (the machine image ships it; see .ci/install-deploy.sh)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def render(directory: Path, tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    kubectl_or_skip()
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = tmp_path / f"{directory.name}.yaml"
    rendered.write_text(result.stdout)
    return rendered, [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def validate(rendered: Path, version: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", version, str(rendered)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def check_config(text: str, tmp_path: Path) -> dict[str, Any]:
    """`tracejudge check-config` on a ConfigMap's tracejudge.yaml: the effective config, every key valid."""
    path = tmp_path / "tracejudge.yaml"
    path.write_text(text)
    command = [sys.executable, "-m", "tracejudge.cli", "check-config", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def config_map(docs: list[dict[str, Any]], generated_name: str) -> dict[str, Any]:
    """A generated ConfigMap by the name the pod spec uses (kustomize appends a hash of the content)."""
    return find(docs, "ConfigMap", generated_name)


def by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [item] = [i for i in items if i["name"] == name]
    return item


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def port_number(container: dict[str, Any], port: int | str) -> int:
    return port if isinstance(port, int) else by_name(container["ports"], port)["containerPort"]


def image_facts() -> dict[str, str]:
    """What the manifests must agree with in deploy/Dockerfile: its user and its data volume."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    volume = re.search(r'^VOLUME \["([^"]+)"\]$', dockerfile, re.M)
    assert user and volume
    return {"uid": user.group(1), "gid": user.group(2), "volume": volume.group(1)}


def check_tracejudge_container(pod: dict[str, Any], container: dict[str, Any], docs: list[dict[str, Any]],
                               tmp_path: Path) -> dict[str, Any]:  # fmt: skip
    """The checks every tracejudge container passes, sidecar or central; returns its effective config."""
    image = image_facts()
    env = env_of(container)
    admin_host, _, admin_port = env["TRACEJUDGE_METRICS"].rpartition(":")
    assert admin_host == "0.0.0.0"  # the kubelet probes the pod's address, not its loopback
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_number(container, get["port"]) == int(admin_port), probe
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]

    # The data directory is the image's volume, and a pod volume with a size limit is mounted there.
    assert env["TRACEJUDGE_DATA_DIR"] == image["volume"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    data_volume = by_name(pod["volumes"], mounts[image["volume"]])
    assert data_volume["emptyDir"]["sizeLimit"]

    # The config file the args name is the ConfigMap's key, mounted read-only.
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    config_mount = by_name(container["volumeMounts"], mounts[str(config_path.parent)])
    assert config_mount["readOnly"] is True
    config_volume = by_name(pod["volumes"], config_mount["name"])
    data = config_map(docs, config_volume["configMap"]["name"])["data"]
    config = check_config(data[config_path.name], tmp_path)

    # It runs as the image's user, on a read-only root, its volumes writable through fsGroup.
    security = container["securityContext"]
    assert (str(security["runAsUser"]), str(security["runAsGroup"])) == (image["uid"], image["gid"])
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert str(pod["securityContext"]["fsGroup"]) == image["gid"]
    assert pod["terminationGracePeriodSeconds"] >= config["scoring"]["drain_timeout"] + 10 + 10  # + forward drain
    return config


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("directory", [K8S / "base", K8S / "overlays" / "central"], ids=["base", "central"])
def test_manifests_render_and_validate_strictly(directory: Path, version: str, tmp_path: Path):
    rendered, docs = render(directory, tmp_path)
    result = validate(rendered, version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed ") == len(docs), result.stdout


def test_strict_validation_rejects_a_field_kubernetes_does_not_have(tmp_path: Path):
    """The validation above means something: a misspelt field in the sidecar fails it."""
    rendered, docs = render(K8S / "base", tmp_path)
    deployment = find(docs, "Deployment", "example-app")
    deployment["spec"]["template"]["spec"]["initContainers"][0]["restartPolicyy"] = "Always"
    rendered.write_text(yaml.safe_dump_all(docs))
    result = validate(rendered, KUBERNETES_VERSIONS[0])
    assert result.returncode != 0
    assert "restartPolicyy" in result.stdout + result.stderr


def test_base_runs_tracejudge_as_a_native_sidecar_of_the_app(tmp_path: Path):
    _, docs = render(K8S / "base", tmp_path)
    pod = find(docs, "Deployment", "example-app")["spec"]["template"]["spec"]
    sidecar = by_name(pod["initContainers"], "tracejudge")
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: up before the app, down after it
    assert sidecar["image"].startswith("tracejudge:")
    config = check_tracejudge_container(pod, sidecar, docs, tmp_path)
    assert {s["name"] for s in config["scorers"]} >= {"no_error"}
    assert all(s["sample_rate"] > 0 for s in config["scorers"])
    assert config["forward"], "the sidecar forwards the pod's spans to a backend"

    # The app exports to the sidecar's OTLP/gRPC listener over the pod's loopback.
    [app] = pod["containers"]
    sidecar_env = env_of(sidecar)
    target = urlsplit(env_of(app)["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert (target.hostname, str(target.port)) == tuple(sidecar_env["TRACEJUDGE_GRPC"].rsplit(":", 1))
    assert target.hostname == "127.0.0.1"
    assert env_of(app)["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"


def test_central_overlay_puts_tracejudge_behind_the_collectors_trace_id_load_balancing(tmp_path: Path):
    _, docs = render(K8S / "overlays" / "central", tmp_path)
    namespace = find(docs, "Namespace", "tracejudge")["metadata"]["name"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {namespace}

    # The tier: a Deployment and a headless Service selecting its pods on their OTLP/gRPC port.
    tier = find(docs, "Deployment", "tracejudge-central")["spec"]["template"]
    [container] = tier["spec"]["containers"]
    config = check_tracejudge_container(tier["spec"], container, docs, tmp_path)
    assert env_of(container)["TRACEJUDGE_GRPC"].startswith("0.0.0.0:")  # the Collector is another pod
    token = by_name(container["env"], "TRACEJUDGE_TOKEN")["valueFrom"]["secretKeyRef"]
    assert token["optional"] is True  # without the Secret the control plane stays off, tracejudge still runs
    service = find(docs, "Service", "tracejudge-central")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= tier["metadata"]["labels"].items()
    otlp_port = by_name(service["spec"]["ports"], "otlp-grpc")
    assert port_number(container, otlp_port["targetPort"]) == int(env_of(container)["TRACEJUDGE_GRPC"].split(":")[1])

    # The Collector: its config routes traces by trace id to that Service through the k8s resolver.
    collector = find(docs, "Deployment", "otel-collector")["spec"]["template"]["spec"]
    [collector_container] = collector["containers"]
    [config_arg] = [a for a in collector_container["args"] if a.startswith("--config=")]
    config_file = Path(config_arg.removeprefix("--config="))
    mount = by_name(collector_container["volumeMounts"], "config")
    assert mount["mountPath"] == str(config_file.parent)
    volume = by_name(collector["volumes"], mount["name"])
    collector_config = yaml.safe_load(config_map(docs, volume["configMap"]["name"])["data"][config_file.name])
    balancing = collector_config["exporters"]["loadbalancing"]
    assert balancing["routing_key"] == "traceID"
    assert balancing["resolver"]["k8s"]["service"] == f"{service['metadata']['name']}.{namespace}"
    assert otlp_port["port"] in balancing["resolver"]["k8s"]["ports"]
    traces = collector_config["service"]["pipelines"]["traces"]
    assert "loadbalancing" in traces["exporters"] and "otlp" in traces["receivers"]
    assert set(traces["exporters"]) <= set(collector_config["exporters"])
    assert collector_config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")

    # The k8s resolver watches the Service's endpoints: the Collector's account may.
    account = collector["serviceAccountName"]
    binding = find(docs, "RoleBinding", "otel-collector-endpoints")
    assert {"kind": "ServiceAccount", "name": account} in [
        {k: s[k] for k in ("kind", "name")} for s in binding["subjects"]
    ]
    role = find(docs, "Role", binding["roleRef"]["name"])
    assert any("endpoints" in r["resources"] and {"list", "watch"} <= set(r["verbs"]) for r in role["rules"])

    # The app has no sidecar left and sends to the Collector's Service.
    app_pod = find(docs, "Deployment", "example-app")["spec"]["template"]["spec"]
    assert "initContainers" not in app_pod and "volumes" not in app_pod
    target = urlsplit(env_of(app_pod["containers"][0])["OTEL_EXPORTER_OTLP_ENDPOINT"])
    collector_service = find(docs, "Service", target.hostname or "")
    assert target.port in [p["port"] for p in collector_service["spec"]["ports"]]

    # tracejudge forwards nothing (the Collector delivers the spans) and sends its verdicts past the
    # Collector, which would otherwise route them back to the tier.
    assert config["forward"] == []
    verdicts = urlsplit(config["scoring"]["otlp_endpoint"])
    assert verdicts.hostname and not verdicts.hostname.startswith(collector_service["metadata"]["name"])

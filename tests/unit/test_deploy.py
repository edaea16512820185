"""deploy/kubernetes: the Kubernetes manifests, checked offline (no cluster, no network).

Every document under deploy/kubernetes (and the built-in kinds under optional/) is validated against the
Kubernetes JSON schemas of one fixed version, in strict mode (an unknown or misspelt field fails), by
kubernetes-validate, which ships the schemas. The CRDs under optional/ (KEDA, the Prometheus Operator) are
checked by structure. Then what a schema cannot see: every command is one the `moderation` CLI parses,
every queue is one the app publishes to and each has a consumer, every environment variable is a setting
the app reads, references (Secrets, ConfigMaps, volumes, selectors) resolve, and the pods are locked down.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import typer.main
import yaml
from prometheus_client.metrics import MetricWrapperBase
from pydantic import AliasChoices

from moderation import metrics, queue
from moderation.cli.main import app as cli_app
from moderation.settings import Settings
from tests.support.argv import option

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
OPTIONAL = DEPLOY / "optional"
KUSTOMIZATION = DEPLOY / "kustomization.yaml"
NAMESPACE = "moderation"
# The oldest Kubernetes release the manifests support; its schemas ship inside kubernetes-validate.
K8S_VERSION = "1.30"
# Custom resources: no schema in kubernetes-validate; checked by structure below.
CRD_GROUPS = {"keda.sh", "monitoring.coreos.com"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
APP_IMAGES = {"moderation", "moderation-gpu"}
QUEUE_NAMES = {value for name, value in vars(queue).items() if name.startswith("Q_")}
# Variables the app's libraries read, beside Settings' own.
EXTERNAL_ENV = {
    "PYTHONUNBUFFERED",
    "AWS_ACCESS_KEY_ID",  # boto3's standard credential chain (the S3 blob store)
    "AWS_SECRET_ACCESS_KEY",
    "HF_HUB_OFFLINE",  # huggingface_hub: never download at run time
    "HF_HOME",
    "NVIDIA_DRIVER_CAPABILITIES",  # the NVIDIA container runtime: `utility` brings nvidia-smi
}
# The commands other than `moderation ...` a container may run: (argv prefix, why).
OTHER_COMMANDS = {
    ("celery", "-A", "workers.app", "flower"): "Flower, on the workers' Celery app",
    ("hf", "download"): "huggingface_hub's CLI, filling the model volume once",
}


@dataclass(frozen=True)
class Manifest:
    file: str  # relative to deploy/kubernetes
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def group(self) -> str:
        api_version = str(self.body["apiVersion"])
        return api_version.split("/")[0] if "/" in api_version else ""

    def __str__(self) -> str:
        return f"{self.file}:{self.kind}/{self.name}"


def load(folder: Path) -> list[Manifest]:
    found = []
    for path in sorted(folder.glob("*.yaml")):
        if path == KUSTOMIZATION:
            continue
        for body in yaml.safe_load_all(path.read_text()):
            if body:
                found.append(Manifest(str(path.relative_to(DEPLOY)), body))
    return found


BASE = load(DEPLOY)
EXTRA = load(OPTIONAL)
ALL = BASE + EXTRA
NATIVE = [m for m in ALL if m.group not in CRD_GROUPS]


def of_kind(kind: str, manifests: list[Manifest] = ALL) -> dict[str, Manifest]:
    return {m.name: m for m in manifests if m.kind == kind}


def pod_spec(m: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = m.body["spec"]["template"]["spec"]
    return spec


def containers(m: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(m)
    return [*spec.get("initContainers", []), *spec["containers"]]


def pods(manifests: list[Manifest] = ALL) -> Iterator[Manifest]:
    return (m for m in manifests if m.kind in POD_KINDS)


def app_containers(manifests: list[Manifest] = ALL) -> Iterator[tuple[Manifest, dict[str, Any]]]:
    """Containers running the project's images (every one of them, in this folder)."""
    for m in pods(manifests):
        for c in containers(m):
            if image_name(c["image"]) in APP_IMAGES:
                yield m, c


def image_name(image: str) -> str:
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


def deployment(name: str) -> Manifest:
    return of_kind("Deployment")[name]


def command(c: dict[str, Any]) -> list[str]:
    return [str(part) for part in [*c.get("command", []), *c.get("args", [])]]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def pod_labels(m: Manifest) -> dict[str, str]:
    found: dict[str, str] = m.body["spec"]["template"]["metadata"]["labels"]
    return found


def settings_env_names() -> set[str]:
    """The environment variables Settings reads: MODERATION_<FIELD>, or a field's own aliases."""
    names = set()
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"MODERATION_{field}")
    return {name.upper() for name in names}


def config_data(kind: str, name: str) -> dict[str, str]:
    m = of_kind(kind)[name]
    data: dict[str, str] = m.body.get("stringData") or m.body.get("data") or {}
    return data


def container_env(c: dict[str, Any]) -> dict[str, str]:
    """Every variable a container gets: envFrom sources first, then its own env (values of secretKeyRef
    and the like as 'ref:NAME/KEY')."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                env.update(config_data(kind, source[key]["name"]))
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"].get("secretKeyRef") or var["valueFrom"].get("configMapKeyRef")
            env[var["name"]] = f"ref:{ref['name']}/{ref['key']}"
    return env


def parse_cli(args: list[str]) -> None:
    """Parse `moderation ARGS` with the real typer app, subcommand groups included, without running it.
    Raises what click raises for an unknown command or option, or a bad value."""
    command: Any = typer.main.get_command(cli_app)
    ctx = command.context_class(command, info_name="moderation")
    rest = list(args)
    while hasattr(command, "get_command"):  # a group: the next word names a subcommand
        if not rest:
            raise LookupError(f"`{ctx.command_path}` needs a subcommand")
        name, rest = rest[0], rest[1:]
        sub = command.get_command(ctx, name)
        if sub is None:
            raise LookupError(f"`{ctx.command_path}` has no subcommand {name!r}")
        ctx, command = sub.context_class(sub, info_name=name, parent=ctx), sub
    command.make_context(ctx.info_name, rest, parent=ctx.parent)


def consumed_queues(args: list[str]) -> list[str]:
    """The queues `moderation worker ARGS` consumes, as moderation/cli/main.py picks them."""
    assert args[:2] == ["moderation", "worker"], args
    explicit = option(args, "-Q", "--queues")
    if explicit:
        return explicit.split(",")
    if option(args, "--gpus") is not None or option(args, "--device") is not None:
        return [queue.Q_GPU]
    return list(queue.CPU_QUEUES)


def workers() -> dict[str, list[str]]:
    """Deployment -> the queues its `moderation worker` consumes."""
    found = {}
    for m in pods():
        for c in containers(m):
            if command(c)[:2] == ["moderation", "worker"]:
                found[m.name] = consumed_queues(command(c))
    return found


def exported_metrics() -> set[str]:
    return {
        d.name for value in vars(metrics).values() if isinstance(value, MetricWrapperBase) for d in value.describe()
    }


# -- the manifest set ---------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["apiVersion"].startswith("kustomize.config.k8s.io/")
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"] == NAMESPACE
    listed = kustomization["resources"]
    on_disk = sorted(p.name for p in DEPLOY.glob("*.y*ml") if p != KUSTOMIZATION)
    assert len(listed) == len(set(listed)), "a resource listed twice"
    assert sorted(listed) == on_disk, "kustomization.yaml must list exactly the manifests of deploy/kubernetes"
    # One place to retag: every image the pods run has an `images:` entry.
    retagged = {entry["name"] for entry in kustomization.get("images", [])}
    assert {image_name(c["image"]) for _, c in app_containers(BASE)} <= retagged


def test_the_base_is_the_whole_pipeline() -> None:
    assert not [str(m) for m in BASE if m.group in CRD_GROUPS], "CRDs belong in optional/ (clusters may lack them)"
    assert {"api", "worker-cpu", "worker-callbacks", "worker-gpu", "beat", "flower"} <= set(of_kind("Deployment", BASE))
    assert {"api", "flower"} <= set(of_kind("Service", BASE))
    assert "migrate" in of_kind("Job", BASE)
    assert NAMESPACE in of_kind("Namespace", BASE)


def test_every_resource_is_in_the_namespace() -> None:
    for m in ALL:
        if m.kind != "Namespace":
            assert m.body["metadata"].get("namespace") == NAMESPACE, m


@pytest.mark.parametrize("manifest", NATIVE, ids=str)
def test_validates_against_the_kubernetes_schema(manifest: Manifest) -> None:
    """Strict: an unknown field (a typo) fails, as does a wrong type or a missing required field.
    A kind without a schema raises SchemaNotFoundError, which fails the test too."""
    try:
        kubernetes_validate.validate(manifest.body, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        pytest.fail(f"{manifest}: {where}: {exc.message}")


def _misspell_probe(d: dict[str, Any]) -> None:
    c = d["spec"]["template"]["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")


def _string_port(d: dict[str, Any]) -> None:
    d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"


def _no_selector(d: dict[str, Any]) -> None:
    del d["spec"]["selector"]


def _misplaced_field(d: dict[str, Any]) -> None:
    d["spec"]["template"]["spec"]["runAsNonRoot"] = True  # belongs in securityContext


@pytest.mark.parametrize("breakage", [_misspell_probe, _string_port, _no_selector, _misplaced_field])
def test_the_validator_catches_a_broken_manifest(breakage: Callable[[dict[str, Any]], None]) -> None:
    """The schema check is not vacuous: the API Deployment, broken in one place, fails it."""
    broken = copy.deepcopy(deployment("api").body)
    kubernetes_validate.validate(broken, K8S_VERSION, strict=True)  # whole, it passes
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# -- commands, queues, settings -----------------------------------------------------------------------


def test_commands_are_real() -> None:
    run = []
    for m in pods():
        for c in containers(m):
            argv = command(c)
            assert argv, f"{m}: container {c['name']} relies on the image's default command"
            if argv[0] == "moderation":
                try:
                    parse_cli(argv[1:])
                except Exception as exc:  # click's exceptions (typer may vendor click) or LookupError
                    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
                    pytest.fail(f"{m}: `{' '.join(argv)}` is not a command the CLI accepts: {message}")
                run.append(argv[1:])
            else:
                assert any(tuple(argv[: len(p)]) == p for p in OTHER_COMMANDS), f"{m}: unexpected command {argv}"
    for expected in (["migrate"], ["api"], ["worker"], ["beat"], ["blobs", "init"], ["ingest", "serve"]):
        assert any(args[: len(expected)] == expected for args in run), f"nothing runs `moderation {' '.join(expected)}`"
    assert (REPO / "workers" / "app.py").is_file()  # what `celery -A workers.app flower` loads


@pytest.mark.parametrize(
    "args",
    [["worker", "--gpu", "all"], ["worker", "-c", "two"], ["blobs", "create"], ["blobs"], ["migrations"]],
)
def test_the_cli_check_rejects_what_the_cli_rejects(args: list[str]) -> None:
    with pytest.raises(Exception):  # noqa: B017 - click's classes vary with typer's version
        parse_cli(args)


def test_worker_queues_are_real_and_all_consumed() -> None:
    consumed = workers()
    assert {"worker-cpu", "worker-callbacks", "worker-gpu"} <= set(consumed)
    for name, queues in consumed.items():
        unknown = set(queues) - QUEUE_NAMES
        assert not unknown, f"{name} consumes {unknown}, not queues of moderation/queue.py"
    # The CPU worker reads its queues in CPU_QUEUES' order (finish items before starting new ones).
    assert consumed["worker-cpu"] == list(queue.CPU_QUEUES)
    assert consumed["worker-callbacks"] == [queue.Q_CALLBACKS]
    assert consumed["worker-gpu"] == [queue.Q_GPU]
    base_consumed = {q for name, qs in consumed.items() if name in of_kind("Deployment", BASE) for q in qs}
    assert base_consumed == QUEUE_NAMES, f"queues nobody consumes: {QUEUE_NAMES - base_consumed}"
    callbacks = command(containers(deployment("worker-callbacks"))[0])
    assert option(callbacks, "--pool", "-P") in (None, queue.CALLBACK_POOL)


def test_environment_variables_are_settings_the_app_reads() -> None:
    """Every variable in the ConfigMap, the Secrets and the containers' env is a field of Settings under
    its env name, a variable a library reads (EXTERNAL_ENV), or, for Flower only, a Flower option."""
    from flower.options import default_options as flower_options

    known = settings_env_names() | EXTERNAL_ENV

    def is_flower_option(var: str) -> bool:
        return var.startswith("FLOWER_") and var[len("FLOWER_") :].lower() in flower_options

    for m in ALL:
        if m.kind in ("ConfigMap", "Secret"):
            for var in config_data(m.kind, m.name):
                assert var in known or is_flower_option(var), f"{m}: {var} is no setting of moderation/settings.py"
    for m in pods():
        for c in containers(m):
            flower = command(c)[3:4] == ["flower"]
            for var in container_env(c):
                assert var in known or (flower and is_flower_option(var)), f"{m}: {c['name']} gets unknown {var}"


def test_references_resolve() -> None:
    for m in pods():
        spec = pod_spec(m)
        assert spec.get("serviceAccountName") in of_kind("ServiceAccount"), m
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in of_kind("PersistentVolumeClaim"), m
        for c in containers(m):
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{m}: {c['name']} mounts unknown volume {mount['name']}"
            for source in c.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        assert source[key]["name"] in of_kind(kind), f"{m}: no {kind} {source[key]['name']}"
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in config_data("Secret", ref["name"]), f"{m}: no key {ref['key']}"
            ports = {p["name"] for p in c.get("ports", []) if "name" in p}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                action = c.get(probe, {}).get("httpGet") or c.get(probe, {}).get("tcpSocket")
                if action and isinstance(action["port"], str):
                    assert action["port"] in ports, f"{m}: {probe} on unknown port {action['port']}"
    for svc in of_kind("Service").values():
        targets = [m for m in pods() if m.kind != "Job" and labels_match(svc.body["spec"]["selector"], pod_labels(m))]
        assert len(targets) == 1, f"{svc} selects {[str(t) for t in targets]}"
        names = {p.get("name") for c in containers(targets[0]) for p in c.get("ports", [])}
        for port in svc.body["spec"]["ports"]:
            assert port["targetPort"] in names, f"{svc}: no container port {port['targetPort']}"
    for m in pods():
        selector = m.body["spec"].get("selector", {}).get("matchLabels")
        if selector:
            assert labels_match(selector, pod_labels(m)), f"{m}: selector does not match its own pods"


# -- shared settings and secrets ----------------------------------------------------------------------


def test_configmap_holds_no_secret_and_secrets_are_templates() -> None:
    config = config_data("ConfigMap", "moderation-config")
    for var, value in config.items():
        assert not re.search(r"PASSWORD|SECRET|TOKEN|_KEY$|_KEY_", var), f"{var} belongs in a Secret"
        if "://" in value:
            assert urlsplit(value).password is None, f"{var} carries a password: it belongs in a Secret"
    for secret in of_kind("Secret").values():
        data = config_data("Secret", secret.name)
        assert data, secret
        for var, value in data.items():
            assert "CHANGE-ME" in value, f"{secret}: {var} must be a marked placeholder, not a real value"
            assert var not in config, f"{var} is both in the ConfigMap and in {secret}"


def test_every_process_shares_the_same_settings() -> None:
    """One ConfigMap and one Secret for all: the API and the workers cannot disagree on where blobs,
    broker, cache and database are."""
    for m, c in app_containers():
        if command(c)[:1] == ["hf"]:
            continue  # the weights download runs nothing of the app
        sources = [s.get("configMapRef", s.get("secretRef", {})).get("name") for s in c.get("envFrom", [])]
        assert sources[:2] == ["moderation-config", "moderation-secrets"], f"{m}: {c['name']} gets {sources}"
        env = container_env(c)
        assert not {"MODERATION_BLOB_URL", "DATABASE_URL"} & {v["name"] for v in c.get("env", [])}, m
        owner = "MODERATION_MIGRATE_DATABASE_URL" in env or "MODERATION_SERVICE_DB_PASSWORD" in env
        # Only the migrate step logs in as the schema owner.
        assert owner == (command(c) == ["moderation", "migrate"]), f"{m}: {c['name']} and the owner's credentials"


def test_urls_point_at_one_set_of_services() -> None:
    config = config_data("ConfigMap", "moderation-config")
    secrets = config_data("Secret", "moderation-secrets")
    owner = config_data("Secret", "moderation-migrate-secrets")
    blob = urlsplit(config["MODERATION_BLOB_URL"])
    assert blob.scheme == "s3" and blob.netloc, "across pods the blob store must be S3 (file:// is per pod)"
    assert urlsplit(config["MODERATION_S3_ENDPOINT_URL"]).scheme in ("http", "https")
    assert config["MODERATION_S3_REGION"]
    service, schema_owner = urlsplit(secrets["DATABASE_URL"]), urlsplit(owner["MODERATION_MIGRATE_DATABASE_URL"])
    assert service.scheme == schema_owner.scheme == "postgresql"
    assert service.username == "moderation_service", "services log in as the service role"
    assert schema_owner.username != "moderation_service"
    assert (service.hostname, service.port, service.path) == (
        schema_owner.hostname,
        schema_owner.port,
        schema_owner.path,
    )
    assert service.password == owner["MODERATION_SERVICE_DB_PASSWORD"], "the role's password and the URL's differ"
    assert urlsplit(secrets["MODERATION_BROKER_URL"]).scheme == "amqp", "RabbitMQ is the broker across hosts"
    cache, redis = urlsplit(config["MODERATION_CACHE_URL"]), urlsplit(config["REDIS_URL"])
    assert (cache.hostname, cache.port) != (redis.hostname, redis.port), "the verdict cache has its own Redis"
    assert config["MODERATION_VLM"] == "true", "worker-gpu runs: the policies' VLM stages must be on"
    assert config["MODERATION_VLM_ENGINE"] in ("transformers", "openai")


# -- the processes ------------------------------------------------------------------------------------


def test_api() -> None:
    api = deployment("api")
    (c,) = containers(api)
    assert command(c) == ["moderation", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert [p["containerPort"] for p in c["ports"]] == [8000]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api.body["spec"].get("replicas", 2) >= 2
    hpa = of_kind("HorizontalPodAutoscaler")["api"].body["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] >= hpa["minReplicas"]
    pdb = of_kind("PodDisruptionBudget")["api"].body["spec"]
    assert labels_match(pdb["selector"]["matchLabels"], pod_labels(api))
    assert pdb.get("minAvailable", 0) >= 1 or "maxUnavailable" in pdb


def test_beat_is_a_singleton() -> None:
    beat = deployment("beat").body["spec"]
    assert beat["replicas"] == 1
    assert beat["strategy"]["type"] == "Recreate", "a rolling update would run two beats for a while"
    scaled = {
        m.body["spec"]["scaleTargetRef"]["name"] for m in ALL if m.kind in ("HorizontalPodAutoscaler", "ScaledObject")
    }
    assert "beat" not in scaled


def test_gpu_worker() -> None:
    gpu = deployment("worker-gpu")
    (c,) = containers(gpu)
    argv = command(c)
    assert option(argv, "--gpus") is not None
    assert option(argv, "-c", "--concurrency") is None, "the CLI sizes the GPU worker's thread pool"
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1, "one GPU per pod"
    assert image_name(c["image"]) == "moderation-gpu"
    env = container_env(c)
    assert env["HF_HUB_OFFLINE"] == "1", "weights are never fetched at run time"
    assert "utility" in env["NVIDIA_DRIVER_CAPABILITIES"], "`--gpus` finds the GPU with nvidia-smi"
    weights = [mnt for mnt in c["volumeMounts"] if mnt["mountPath"] == env["HF_HOME"]]
    assert weights and weights[0].get("readOnly") is True
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod_spec(gpu).get("tolerations", []))
    for m, other in app_containers():
        if m.name != "worker-gpu" and m.name != "model-download":
            assert "nvidia.com/gpu" not in other.get("resources", {}).get("limits", {}), m


def test_flower_has_basic_auth_from_a_secret() -> None:
    flower = deployment("flower")
    (c,) = containers(flower)
    argv = command(c)
    assert argv[:4] == ["celery", "-A", "workers.app", "flower"]
    assert not any("basic-auth" in a or "basic_auth" in a for a in argv), "credentials stay off the command line"
    assert container_env(c)["FLOWER_BASIC_AUTH"] == "ref:moderation-flower/FLOWER_BASIC_AUTH"
    assert option(argv, "--port") == str(c["ports"][0]["containerPort"])


def test_migrations_job() -> None:
    job = of_kind("Job")["migrate"]
    steps = [command(c) for c in containers(job)]
    # Init containers run in order, each to success: the schema, then the bucket.
    assert steps == [["moderation", "migrate"], ["moderation", "blobs", "init"]]
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")


def test_model_download_fetches_the_model_the_worker_loads() -> None:
    (c,) = containers(of_kind("Job")["model-download"])
    config = config_data("ConfigMap", "moderation-config")
    model = config.get("MODERATION_VLM_MODEL", Settings.model_fields["vlm_model"].default)
    assert command(c) == ["hf", "download", model]
    assert container_env(c)["HF_HOME"] == container_env(containers(deployment("worker-gpu"))[0])["HF_HOME"]


def test_pods_are_locked_down() -> None:
    """The namespace enforces the `restricted` Pod Security Standard; these are its rules (and the
    image's uid), so a regression fails here before admission refuses it."""
    uid = int(re.search(r"--uid (\d+)", (REPO / "Dockerfile").read_text()).group(1))  # type: ignore[union-attr]
    assert of_kind("Namespace")[NAMESPACE].body["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "restricted"
    )
    var_dir = config_data("ConfigMap", "moderation-config")["MODERATION_VAR_DIR"]
    for m in pods():
        spec = pod_spec(m)
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == uid, m
        assert security["seccompProfile"]["type"] == "RuntimeDefault", m
        assert spec.get("automountServiceAccountToken") is False, m
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), m
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert not [v for v in volumes.values() if "hostPath" in v], m
        for c in containers(m):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged"), m
            assert sc["readOnlyRootFilesystem"] is True, m
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), m
            assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"], m
            # With a read-only root, the app writes only under MODERATION_VAR_DIR and /tmp: emptyDirs.
            writable = {mnt["mountPath"] for mnt in c.get("volumeMounts", []) if not mnt.get("readOnly")}
            needed = {"/tmp"} | ({var_dir} if "MODERATION_VAR_DIR" in container_env(c) else set())
            assert needed <= writable, f"{m}: {c['name']} lacks writable {needed - writable}"
            for mnt in c.get("volumeMounts", []):
                if mnt["mountPath"] in needed:
                    assert "emptyDir" in volumes[mnt["name"]], f"{m}: {mnt['mountPath']} is not an emptyDir"


def test_images() -> None:
    for m, c in app_containers():
        assert c["image"] in ("moderation:latest", "moderation-gpu:latest"), m
        assert c.get("imagePullPolicy") == "IfNotPresent", m


# -- optional/: custom resources, by structure --------------------------------------------------------


def test_keda_scaledobjects() -> None:
    scaled = of_kind("ScaledObject")
    assert {"worker-cpu", "worker-gpu"} <= set(scaled)
    # Callbacks back off while receivers are down: more workers change nothing (docs/DEPLOY.md § 5).
    assert "worker-callbacks" not in scaled
    consumed = workers()
    hpa_targets = {m.body["spec"]["scaleTargetRef"]["name"] for m in of_kind("HorizontalPodAutoscaler").values()}
    names = exported_metrics()
    for obj in scaled.values():
        assert obj.body["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj.body["spec"]
        target = spec["scaleTargetRef"]["name"]
        assert target in of_kind("Deployment", BASE) and target in consumed, f"{obj}: {target} is no worker"
        assert target not in hpa_targets, f"{obj}: KEDA makes its own HPA; {target} already has one"
        assert "replicas" not in deployment(target).body["spec"], f"{target}: `kubectl apply` would fight KEDA"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], obj
        assert spec["triggers"], obj
        signalled: set[str] = set()
        for trigger in spec["triggers"]:
            assert trigger["type"] == "prometheus", obj
            assert trigger.get("metricType", "AverageValue") in ("AverageValue", "Value"), obj
            meta = trigger["metadata"]
            assert set(meta) >= {"serverAddress", "query", "threshold"}, obj
            assert all(isinstance(value, str) for value in meta.values()), f"{obj}: KEDA metadata values are strings"
            assert urlsplit(meta["serverAddress"]).scheme in ("http", "https"), obj
            assert float(meta["threshold"]) > 0, obj
            query = meta["query"]
            used = set(re.findall(r"\b(moderation_[a-z_]+)\{", query))
            assert used and used <= names, f"{obj}: {used - names} are not metrics of moderation/metrics.py"
            queues = {q for pattern in re.findall(r'queue=~?"([^"]*)"', query) for q in pattern.split("|")}
            assert queues and queues <= set(consumed[target]), f"{obj}: {target} does not consume {queues}"
            signalled |= queues
        assert signalled == set(consumed[target]), f"{obj}: no signal from {set(consumed[target]) - signalled}"


def test_servicemonitor_scrapes_the_api() -> None:
    monitor = of_kind("ServiceMonitor")["api"].body
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = of_kind("Service")["api"].body
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert all(e["port"] in ports and e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])

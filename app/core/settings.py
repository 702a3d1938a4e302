"""Service settings: one class, read from `LDM_*` environment variables by API and worker."""

import base64
import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.core.policy import TenantPolicy


class Settings(BaseSettings):
    """Everything that differs between deployments; nothing is configured by editing code."""

    model_config = SettingsConfigDict(env_prefix="LDM_", extra="ignore")

    # Where things are
    redis_url: str = "redis://localhost:6379/0"
    # High availability: comma-separated host:port of Redis Sentinels (the URL then gives
    # only the database and password), and the name they monitor the primary under.
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str = "mymaster"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    storage_url: str = Field(
        default_factory=lambda: (Path("data") / "images").resolve().as_uri(),
        description="file:///path for a local folder, s3://bucket/prefix for S3",
    )
    # S3-compatible storage (AWS, MinIO, R2, GCS interop). Credentials come from boto3's usual
    # chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, or an instance role.
    s3_endpoint_url: str | None = Field(None, description="empty for AWS")
    s3_public_endpoint_url: str | None = Field(
        None, description="endpoint in presigned URLs, when clients reach S3 by another name"
    )
    s3_region: str | None = None
    url_ttl: int = Field(
        900, ge=1, le=7 * 24 * 3600, description="seconds a presigned image URL is valid"
    )

    # The model this deployment serves
    model: str = Field(
        "tiny-shapes",
        description="tiny-shapes (trained, shipped), tiny-sd (random weights, fastest), "
        "a diffusers model id or a local folder",
    )
    # Comma-separated in the environment; the API accepts these, a worker serves `model`.
    models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    model_cache: Path = Path(".cache/models")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    native_size: int | None = Field(None, ge=64, multiple_of=8, description="overrides the model's")
    default_steps: int | None = Field(None, ge=1, description="overrides the model's default")
    default_guidance_scale: float | None = Field(None, ge=0, le=30)
    max_batch: int | None = Field(
        None, ge=1, description="images a worker runs in one call; 1 turns batching off"
    )
    compile: bool = Field(False, description="torch.compile the denoiser at start (CUDA)")
    vae_tiling: bool = Field(
        False,
        description="decode in tiles (less memory for large images; the picture changes slightly)",
    )
    safety_checker: bool = Field(
        True, description="run a model's safety checker when it has one (SD 1.x); off: never"
    )
    prompt_cache: int = Field(
        256,
        ge=0,
        description="text embeddings a worker keeps by text (the empty negative prompt, "
        "repeated prompts); 0 keeps none",
    )
    preview_interval: float = Field(
        0.25, ge=0, description="seconds between two live previews of a job (at least)"
    )
    preview_every: int = Field(1, ge=1, description="steps between two live previews (at least)")
    lora_dir: str | None = Field(
        None,
        description="the operator's LoRA adapters: a folder or s3://bucket/prefix holding "
        "<model>/<name>.safetensors (added to those shipped with the worker)",
    )
    lora_memory_mb: int = Field(
        1024, ge=0, description="MiB of adapters a worker keeps loaded (least recently used go)"
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads on a CPU: default the model's (tiny-shapes 1), else torch's",
    )

    # Limits a request must stay within
    max_side: int = Field(1024, ge=64)
    max_pixels: int = Field(1024 * 1024, ge=64 * 64)
    max_steps: int = Field(100, ge=1)
    max_images: int = Field(4, ge=1)
    max_loras: int = Field(4, ge=1, le=16, description="adapters one request may stack")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_init_image_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_init_image_pixels: int = Field(4096 * 4096, ge=64 * 64)
    max_queue_length: int = Field(1000, ge=1, description="jobs waiting per model; 503 beyond")
    rate_limit: float | None = Field(None, gt=0, description="submits/s per tenant; 429 beyond")
    rate_burst: int = Field(20, ge=1, description="submits a tenant may make at once")

    # Job lifetime
    job_timeout: int = Field(600, ge=1, description="seconds a job may run before it fails")
    result_ttl: int = Field(24 * 3600, ge=1, description="seconds a finished job is kept")
    sweep_interval: float = Field(
        10,
        gt=0,
        # Each round ticks the clock that tells a Redis outage from dead workers (workers.py).
        le=10,
        description="seconds between the API's expiry sweeps and lost-job checks",
    )
    max_attempts: int = Field(3, ge=1, description="runs of a job whose worker keeps dying")
    result_cache: bool = Field(
        True,
        description="answer a job identical to one that succeeded (same weights, resolved "
        "request and seed) from its stored images, without a GPU",
    )
    cache_shared: bool = Field(
        False, description="the result cache answers any tenant, not only the one that asked"
    )

    # Webhooks (Standard Webhooks signing) and the OpenAI-compatible endpoint
    webhook_secret: SecretStr | None = Field(
        None, description="whsec_<base64> key that signs webhooks; unset refuses webhook_url"
    )
    webhook_allow_private: bool = Field(
        False, description="deliver to private, loopback and link-local addresses too"
    )
    webhook_retry_delays: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 1800.0],
        description="seconds before each retry of a failed delivery, comma-separated",
    )
    webhook_timeout: float = Field(10, gt=0, description="seconds one delivery may take")
    sync_wait_timeout: float = Field(
        300, gt=0, description="seconds POST /v1/images/generations (and edits) waits for its job"
    )
    worker_metrics_port: int | None = Field(
        None, ge=0, le=65535, description="a worker serves Prometheus metrics on this port"
    )

    api_keys: SecretStr | None = Field(
        None, description="comma-separated tenant:key pairs; unset means an open service"
    )
    tenants: dict[str, TenantPolicy] = Field(
        default_factory=dict,
        description='JSON: {"tenant": {"weight": 2, "max_running": 8, "max_queued": 200, '
        '"max_priority": "normal"}}; "*" applies to every tenant not named (the open '
        "service is the tenant 'public')",
    )
    log_level: str = "INFO"

    @field_validator("models", "redis_sentinels", "webhook_retry_delays", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, str) and value.lstrip().startswith("["):
            return json.loads(value)
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Refused at start, not at the first delivery: API and workers must agree on it.
        if value is None or not value.get_secret_value():
            return None  # unset, or set empty (as compose passes an unset variable): off
        key = value.get_secret_value().removeprefix("whsec_")
        try:
            valid = len(base64.b64decode(key, validate=True)) >= 24
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(
                "must be whsec_ and the base64 of at least 24 random bytes; make one with: "
                "python -c \"import base64,os;print('whsec_'+base64.b64encode(os.urandom(32))"
                '.decode())"'
            )
        return value

    @model_validator(mode="after")
    def _serve_the_default_model(self) -> "Settings":
        if not self.models:
            self.models = [self.model]
        elif self.model not in self.models:
            raise ValueError(f"LDM_MODEL {self.model!r} must be one of LDM_MODELS {self.models}")
        return self

    def tenant_policy(self, tenant: str) -> TenantPolicy:
        """The share and limits of `tenant`: its own entry, else "*", else the defaults."""
        return self.tenants.get(tenant) or self.tenants.get("*") or TenantPolicy()

    @property
    def caps_running(self) -> bool:
        """Whether any tenant's running jobs are capped (workers then check at each claim)."""
        return any(policy.max_running for policy in self.tenants.values())


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once; tests build their own `Settings`."""
    return Settings()

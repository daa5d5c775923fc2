"""settings.py: TOML + PACSBOX_* environment, precedence, validation messages (SPEC A10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsbox.settings import SettingsError, load_settings, write_default_config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("PACSBOX_"):
            monkeypatch.delenv(key)


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert (s.ae_title, s.dicom_port, s.dicom_tls_port, s.http_port, s.hl7_port) == (
        "PACSBOX",
        11112,
        2762,
        8080,
        2575,
    )
    assert s.bind_address == "0.0.0.0" and s.storage_format == "part10"
    assert s.duplicate_policy == "replace" and s.patient_id_conflict == "accept"
    assert s.permissive_aes is False and s.permissive_aes_enabled is False
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith("index.sqlite3")
    assert s.log_dir == Path("data") / "log"
    assert not s.tls_enabled


def test_file_then_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text('ae_title = "ARCHIVE"\ndicom_port = 104\ndata_dir = "d"\n')
    s = load_settings(cfg)
    assert s.ae_title == "ARCHIVE" and s.dicom_port == 104
    assert s.data_dir == tmp_path / "d"  # relative to the file
    monkeypatch.setenv("PACSBOX_DICOM_PORT", "4242")
    monkeypatch.setenv("PACSBOX_CONFIG", str(cfg))
    s = load_settings()
    assert s.dicom_port == 4242 and s.ae_title == "ARCHIVE"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("dicom_port = 70000", "dicom_port"),
        ('ae_title = "WAY_TOO_LONG_AE_TITLE"', "ae_title"),
        ('storage_format = "zip"', "storage_format"),
        ('duplicate_policy = "maybe"', "duplicate_policy"),
        ('preferred_transfer_syntax = "1.2.3"', "preferred_transfer_syntax"),
        ('tls_cert = "/nonexistent.pem"\ntls_key = "/nonexistent.key"', "tls_cert"),
        ('tls_cert = "x.pem"', "tls_cert and tls_key"),
        ("unknown_key = 1", "unknown_key"),
        ("max_pdu_size = 100", "max_pdu_size"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, text: str, needle: str) -> None:
    cfg = tmp_path / "p.toml"
    cfg.write_text(text + "\n")
    with pytest.raises(SettingsError) as exc:
        load_settings(cfg)
    assert needle in str(exc.value)


def test_missing_explicit_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("ae_title = \n")
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(bad)


def test_default_config_file_is_valid(tmp_path: Path) -> None:
    cfg = tmp_path / "pacsbox.toml"
    assert write_default_config(cfg)
    assert not write_default_config(cfg)  # never overwritten
    s = load_settings(cfg)
    assert s.dicom_port == 11112 and s.data_dir == tmp_path / "data"


def test_secrets_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PACSBOX_DATABASE_URL", "postgresql+psycopg://pacs:s3cret@db/pacs")
    masked = load_settings().masked()
    assert "s3cret" not in masked["database_url"] and "****" in masked["database_url"]

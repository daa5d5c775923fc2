"""Runtime settings (pacsbox.settings_runtime): validation, the line-by-line config file edit
and the watcher that applies file changes to live Settings objects."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from pacsbox.settings import load_settings
from pacsbox.settings_runtime import (
    RuntimeSettingsError,
    check_now,
    update_config_file,
    validate_changes,
    watch_settings,
)

CONFIG = """\
# top comment
ae_title = "PACSBOX"
duplicate_policy = "replace"   # replace | keep | reject
permissive_aes = true          # accept unknown calling AE titles
cors_origins = [
    "https://a.example",
]
stow_max_bytes = 4096
"""


def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str = CONFIG):  # noqa: ANN202
    for key in list(os.environ):
        if key.startswith("PACSBOX_"):
            monkeypatch.delenv(key)
    path = tmp_path / "pacsbox.toml"
    path.write_text(text)
    return path, load_settings(path, data_dir=tmp_path / "data")


def test_config_file_edit_keeps_comments_and_order(tmp_path: Path) -> None:
    path = tmp_path / "pacsbox.toml"
    path.write_text(CONFIG)
    update_config_file(
        path,
        {"duplicate_policy": "keep", "cors_origins": ["https://b.example"], "wado_user": "his"},
    )
    text = path.read_text()
    assert text.startswith("# top comment\n")
    assert 'duplicate_policy = "keep"  # replace | keep | reject\n' in text
    assert "a.example" not in text and '"https://a.example"' not in text
    assert text.index("permissive_aes") < text.index("cors_origins") < text.index("stow_max")
    values = tomllib.loads(text)
    assert values["duplicate_policy"] == "keep"
    assert values["cors_origins"] == ["https://b.example"]
    assert values["wado_user"] == "his" and values["stow_max_bytes"] == 4096
    update_config_file(path, {"wado_user": None})  # back to the default
    assert "wado_user" not in tomllib.loads(path.read_text())
    assert list(tmp_path.glob(".pacsbox-config-*")) == []
    # a file that does not exist yet is created
    fresh = tmp_path / "new" / "pacsbox.toml"
    update_config_file(fresh, {"relational_queries": False})
    assert tomllib.loads(fresh.read_text()) == {"relational_queries": False}


def test_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _path, settings = _settings(tmp_path, monkeypatch)
    assert validate_changes(settings, {"duplicate_policy": "keep"}) == {"duplicate_policy": "keep"}
    assert validate_changes(settings, {"stow_max_bytes": "2048"}) == {"stow_max_bytes": 2048}
    with pytest.raises(RuntimeSettingsError, match="requires restart"):
        validate_changes(settings, {"dicom_port": 104})
    with pytest.raises(RuntimeSettingsError, match="unknown setting"):
        validate_changes(settings, {"bogus": 1})
    with pytest.raises(RuntimeSettingsError, match="duplicate_policy"):
        validate_changes(settings, {"duplicate_policy": "sometimes"})
    with pytest.raises(RuntimeSettingsError, match="stow_max_bytes"):
        validate_changes(settings, {"stow_max_bytes": 5})
    with pytest.raises(RuntimeSettingsError):
        validate_changes(settings, {})
    # a key set in the environment cannot be changed through the file
    monkeypatch.setenv("PACSBOX_RELATIONAL_QUERIES", "false")
    pinned = load_settings(tmp_path / "pacsbox.toml", data_dir=tmp_path / "data")
    with pytest.raises(RuntimeSettingsError, match="PACSBOX_RELATIONAL_QUERIES") as exc:
        validate_changes(pinned, {"relational_queries": True})
    assert exc.value.status == 409


def test_watcher_applies_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, settings = _settings(tmp_path, monkeypatch)
    seen: list[dict] = []
    watch_settings(settings, seen.append)
    assert settings.duplicate_policy == "replace" and settings.permissive_aes is True
    # a hand edit: runtime keys are applied, others (ae_title) wait for a restart
    path.write_text(
        CONFIG.replace('"replace"', '"reject"')
        .replace("permissive_aes = true", "permissive_aes = false")
        .replace('"PACSBOX"', '"OTHER"')
    )
    check_now()
    assert settings.duplicate_policy == "reject" and settings.permissive_aes is False
    assert settings.ae_title == "PACSBOX"
    assert seen == [{"duplicate_policy": "reject", "permissive_aes": False}]
    # an invalid file is ignored (the running values stay)
    path.write_text(CONFIG.replace('"replace"', '"never"') + "\n# changed\n")
    check_now()
    assert settings.duplicate_policy == "reject" and len(seen) == 1

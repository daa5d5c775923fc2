"""``GET /api/dashboard`` (SPEC E4 dashboard) on SQLite, PostgreSQL and MariaDB, and the public
``GET /api/ui-config``."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from pacsbox.archive.index.writer import INSTANCE, utcnow
from pacsbox.archive.users import UserDirectory
from pacsbox.web.app import create_app
from tests.helpers import free_port, write_study

VIEWER = ("vera", "viewer-pass-1")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something accepts on (stands in for the DICOM listener)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def _store(archive: Any, folder: Path, source: str, n_series: int, per_series: int) -> None:
    for path in write_study(folder, n_series=n_series, per_series=per_series):
        archive.ingest.store_file(path, source_ae=source)


def test_dashboard(archive: Any, tmp_path: Path, listening: int) -> None:  # all databases
    UserDirectory(archive.engine).add(VIEWER[0], "viewer", VIEWER[1])
    _store(archive, tmp_path / "a", "CTSCAN", 2, 3)
    _store(archive, tmp_path / "b", "CTSCAN", 1, 2)
    _store(archive, tmp_path / "c", "MRSCAN", 1, 1)
    _store(archive, tmp_path / "old", "OLDSCAN", 1, 2)
    with archive.engine.begin() as conn:  # OLDSCAN's arrival was two days ago
        conn.execute(
            update(INSTANCE)
            .where(INSTANCE.c.source_ae == "OLDSCAN")
            .values(received_at=utcnow() - timedelta(days=2))
        )
    closed = free_port()
    settings = archive.settings.model_copy(
        update={"dicom_port": listening, "hl7_port": closed, "institution_name": "Ospedale X"}
    )
    with TestClient(create_app(archive, settings)) as client:
        assert client.get("/api/dashboard").status_code == 401
        r = client.get("/api/dashboard", headers=basic(*VIEWER))
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["counts"] == {"patients": 1, "studies": 4, "series": 5, "instances": 11}
        sizes = sum(p.stat().st_size for p in archive.store.root.rglob("*") if p.is_file())
        assert 0 < d["bytes_stored"] <= sizes
        assert d["disk"]["free"] > 0 and d["disk"]["total"] >= d["disk"]["free"]
        assert d["arrivals_24h"] == [
            {"source_ae": "CTSCAN", "instances": 8, "studies": 2},
            {"source_ae": "MRSCAN", "instances": 1, "studies": 1},
        ]
        assert d["last_arrival"].endswith("Z")
        by_name = {x["name"]: x for x in d["listeners"]}
        assert by_name["dicom"] == {
            "name": "dicom",
            "port": listening,
            "ae_title": "PACSBOX",
            "enabled": True,
            "accepting": True,
        }
        assert by_name["hl7"]["enabled"] and not by_name["hl7"]["accepting"]
        assert not by_name["http"]["enabled"] and not by_name["dicom-tls"]["enabled"]

        cfg = client.get("/api/ui-config")  # public
        assert cfg.status_code == 200
        assert cfg.json() == {
            "institution_name": "Ospedale X",
            "url_login": False,
            "languages": ["en", "it"],
            "version": cfg.json()["version"],
        }
        assert "password" not in cfg.text.lower() and "token" not in cfg.text.lower()

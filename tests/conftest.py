"""Fixtures: databases (SQLite, PostgreSQL, MariaDB), settings, archive services, servers.

PostgreSQL and MariaDB URLs come from PACSBOX_TEST_POSTGRES_URL / PACSBOX_TEST_MARIADB_URL
(defaults: the servers this machine kind runs on loopback). Each test gets a database of its
own, created and dropped here. Without a server those tests skip — except under CI=true, where
a missing server fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from pacsbox.app import Archive, build_archive
from pacsbox.settings import Settings
from tests.helpers import Server, free_port, server_env

POSTGRES_URL = os.environ.get(
    "PACSBOX_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MARIADB_URL = os.environ.get(
    "PACSBOX_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/mysql"
)
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: database servers are required)")
    pytest.skip(reason)


def _server_database(admin_url: str, label: str) -> Iterator[str]:
    """Create a uniquely named database on a server, yield its URL, drop it afterwards."""
    name = f"pacsbox_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            if label == "mariadb":
                conn.execute(
                    text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
                )
            else:
                conn.execute(text(f"CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0"))
    except Exception as exc:  # server not running / not reachable
        _unavailable(
            f"{label} server at {make_url(admin_url).render_as_string()} "
            f"unavailable: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        )
        return
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            if label == "postgresql":
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                    )
                )
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """A fresh index database of each supported kind (None = the SQLite default)."""
    if request.param == "sqlite":
        yield None
    elif request.param == "postgresql":
        yield from _server_database(POSTGRES_URL, "postgresql")
    else:
        yield from _server_database(MARIADB_URL, "mariadb")


@pytest.fixture
def settings(tmp_path: Path, db_url: str | None) -> Settings:
    values: dict = dict(
        data_dir=tmp_path / "data",
        bind_address="127.0.0.1",
        dicom_port=0,
        dicom_tls_port=0,
        http_port=0,
        hl7_port=0,
    )
    if db_url:
        values["database_url"] = db_url
    return Settings(**values)


@pytest.fixture
def archive(settings: Settings) -> Iterator[Archive]:
    arch = build_archive(settings)
    yield arch
    arch.engine.dispose()


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        bind_address="127.0.0.1",
        dicom_port=0,
        dicom_tls_port=0,
        http_port=0,
        hl7_port=0,
    )


@pytest.fixture
def sqlite_archive(sqlite_settings: Settings) -> Iterator[Archive]:
    arch = build_archive(sqlite_settings)
    yield arch
    arch.engine.dispose()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator:
    """Factory: start ``pacsbox serve`` with PACSBOX_* overrides; all are stopped at the end."""
    started: list[Server] = []

    def factory(database_url: str | None = None, name: str = "srv", **extra: str) -> Server:
        data_dir = tmp_path / name / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        server = Server(data_dir, port, server_env(data_dir, port, database_url, **extra))
        started.append(server)
        return server.start()

    yield factory
    for server in started:
        server.stop()

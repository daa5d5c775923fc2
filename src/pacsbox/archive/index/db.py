"""Database engine for the index (SPEC A4): SQLite (WAL) by default, PostgreSQL, MariaDB.

``open_database`` creates the engine and brings the schema to the newest Alembic revision, so
every start (and every CLI command) runs the migrations first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy, not pysqlite, emit BEGIN (see _sqlite_begin).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer. NORMAL: a commit survives a process crash (R1);
    # only an OS crash/power loss can roll back the newest transactions.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    # A write transaction that reads first must hold the write lock from its start, or two
    # processes upgrading read locks fail with SQLITE_BUSY: writers ask for ``immediate``.
    if conn.get_execution_options().get("immediate"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def write_connection(engine: Engine) -> Any:
    """A connection whose transactions take the write lock at BEGIN on SQLite."""
    return engine.connect().execution_options(immediate=True)


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the right options for each supported backend."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": 60, "check_same_thread": False}, **kwargs
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if backend in ("mysql", "mariadb"):
        kwargs.setdefault("pool_recycle", 3600)
        kwargs.setdefault("isolation_level", "READ COMMITTED")
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest revision (idempotent)."""
    with engine.begin() as conn:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str, **kwargs: Any) -> Engine:
    engine = create_db_engine(url, **kwargs)
    migrate(engine)
    return engine

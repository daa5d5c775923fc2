#!/usr/bin/env python3
"""Study-list benchmark (SPEC E4, issue 6 target: 100k studies, filtered, < 300 ms server time).

The index is filled quickly and without files: the archive description comes from
``bench/query.py``'s ``generate()`` (its patients, name mix with ~0.6 % SMITH*, study dates
over ~10 years ending yesterday-ish, study kinds and modality mixes, 3 series per study on
average), and the rows go straight into the migrated tables with multi-row INSERTs (one
instance per series; columns filled the way the index writer fills them: upper-cased
``patient_name_search``, sorted ``modalities_in_study``, counters). SQLite is filled first;
PostgreSQL gets a copy through ``bench/query.py``'s ``copy_sqlite_to_postgres`` (COPY) in a
database of its own, MariaDB the same rows through multi-row INSERTs. Both server databases
are dropped at the end.

Each typical list query then runs ``--repeat`` times through the real route
``GET /api/studylist`` (``create_app`` in-process, HTTP Basic, audit on) and its
``X-Server-Time-Ms`` (handler time: parse, page query, count, audit) is recorded, plus the
client-side wall time of the request. Median and p90 are printed; ``--json`` keeps them.

Example::

    .venv/bin/python bench/studylist.py                       # 100k, SQLite + PostgreSQL
    .venv/bin/python bench/studylist.py --studies 100000 --backends sqlite,postgresql,mariadb
    .venv/bin/python bench/studylist.py --quick                # 5k studies, 3 repeats
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import machine_info  # noqa: E402 (sibling bench module)
from query import (  # noqa: E402
    DEFAULT_POSTGRES,
    MODALITY_FACTS,
    Corpus,
    copy_sqlite_to_postgres,
    generate,
    postgres_database,
)

DEFAULT_MARIADB = "mysql+pymysql://root@127.0.0.1:3306/mysql"
USER = ("bench", "bench-pass-123")
CHUNK = 5000


# -- fill ------------------------------------------------------------------------------------
def _rows(corpus: Corpus) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """(table, rows) chunks for the whole corpus, parents before children."""
    from pacsbox.archive.query import search_name

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    per_patient: dict[int, list[int]] = {}
    for i, s in enumerate(corpus.studies):
        per_patient.setdefault(s.patient, []).append(i)
    patient_ids = {p: n + 1 for n, p in enumerate(sorted(per_patient))}
    chunk: list[dict[str, Any]] = []
    for p, studies in sorted(per_patient.items()):
        spec = corpus.patients[p]
        n_series = sum(len(corpus.studies[i].series) for i in studies)
        chunk.append(
            {
                "id": patient_ids[p],
                "patient_id": spec.pid,
                "issuer_of_patient_id": "",
                "patient_name": spec.name,
                "patient_name_search": search_name(spec.name),
                "patient_birth_date": spec.birth,
                "patient_birth_time": "",
                "patient_sex": spec.sex,
                "num_studies": len(studies),
                "num_series": n_series,
                "num_instances": n_series,
                "created_at": now,
                "updated_at": now,
            }
        )
        if len(chunk) >= CHUNK:
            yield "patient", chunk
            chunk = []
    if chunk:
        yield "patient", chunk
    studies_rows: list[dict[str, Any]] = []
    series_rows: list[dict[str, Any]] = []
    instance_rows: list[dict[str, Any]] = []
    series_id = 0
    total = len(corpus.studies)
    for i, s in enumerate(corpus.studies):
        # arrivals spread over the last ~10 years; the newest ~1 % in the last 24 h
        received = now - dt.timedelta(minutes=(total - i) * 52)
        size = sum(MODALITY_FACTS[se.modality][5] for se in s.series)
        studies_rows.append(
            {
                "id": i + 1,
                "study_instance_uid": s.uid,
                "patient_fk": patient_ids[s.patient],
                "study_date": s.date,
                "study_time": s.time,
                "accession_number": s.accession,
                "study_id": s.study_id,
                "study_description": s.description,
                "referring_physician_name": s.referring,
                "modalities_in_study": "\\".join(sorted({se.modality for se in s.series})),
                "patient_age": "",
                "patient_size": "",
                "patient_weight": "",
                "institution_name": "BENCH HOSPITAL",
                "num_series": len(s.series),
                "num_instances": len(s.series),
                "size_bytes": size,
                "source_ae": ("CT01", "MR01", "CR01", "US01")[i % 4],
                "received_at": received,
                "updated_at": received,
            }
        )
        for se in s.series:
            series_id += 1
            series_rows.append(
                {
                    "id": series_id,
                    "series_instance_uid": se.uid,
                    "study_fk": i + 1,
                    "modality": se.modality,
                    "series_number": se.number,
                    "series_date": s.date,
                    "series_time": s.time,
                    "series_description": f"{se.modality} SERIES {se.number}",
                    "body_part_examined": s.body_part,
                    "station_name": f"{se.modality}01",
                    "protocol_name": "",
                    "performed_procedure_step_start_date": "",
                    "performed_procedure_step_start_time": "",
                    "num_instances": 1,
                    "source_ae": "BENCH",
                    "received_at": received,
                    "updated_at": received,
                }
            )
            instance_rows.append(
                {
                    "id": series_id,
                    "sop_instance_uid": f"{se.uid}.1",
                    "series_fk": series_id,
                    "sop_class_uid": MODALITY_FACTS[se.modality][0],
                    "instance_number": 1,
                    "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                    "storage_format": "part10",
                    "file_path": f"{s.uid}/{se.uid}/{se.uid}.1.dcm",
                    "linked": False,
                    "file_size": MODALITY_FACTS[se.modality][5],
                    "source_ae": "BENCH",
                    "received_at": received,
                    "attributes": "{}",
                }
            )
        if len(studies_rows) >= CHUNK:
            yield "study", studies_rows
            yield "series", series_rows
            yield "instance", instance_rows
            studies_rows, series_rows, instance_rows = [], [], []
    if studies_rows:
        yield "study", studies_rows
        yield "series", series_rows
        yield "instance", instance_rows


def fill(url: str, corpus: Corpus) -> float:
    """Migrate the database at ``url`` and insert the corpus; seconds taken."""
    from sqlalchemy import text

    from pacsbox.archive.index.db import open_database
    from pacsbox.archive.index.writer import INSTANCE, PATIENT, SERIES, STUDY

    tables = {"patient": PATIENT, "study": STUDY, "series": SERIES, "instance": INSTANCE}
    started = time.monotonic()
    engine = open_database(url)
    with engine.begin() as conn:
        for name, rows in _rows(corpus):
            conn.execute(tables[name].insert(), rows)
        if engine.dialect.name == "sqlite":
            conn.execute(text("ANALYZE"))
        elif engine.dialect.name in ("mysql", "mariadb"):
            for name in tables:
                conn.execute(text(f"ANALYZE TABLE {name}"))
    engine.dispose()
    return time.monotonic() - started


@contextlib.contextmanager
def mariadb_database(admin_url: str) -> Iterator[str]:
    """Create ``pacsbox_bench_<random>`` on the server, yield its URL, drop only that one."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"pacsbox_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


# -- queries ---------------------------------------------------------------------------------
def queries(corpus: Corpus) -> list[tuple[str, str]]:
    """(name, query string) of the typical list searches."""
    acc = corpus.studies[len(corpus.studies) // 2].accession
    pid = corpus.patients[corpus.studies[len(corpus.studies) // 3].patient].pid
    return [
        ("no filter, newest first", ""),
        ("patientname=SMITH* (prefix)", "patientname=smith*"),
        ("modality=CT OR MR", "modality=ct&modality=mr"),
        ("studydate=pastmonth", "studydate=pastmonth"),
        ("accessionnumber exact", f"accessionnumber={acc}"),
        ("patientid exact", f"patientid={pid}"),
        ("patientsex not equal", "patientsex=!=F"),
        ("modality not equal (no CR series)", "modality=!=CR"),
        ("studydescription contains", "studydescription=**KNEE"),
        ("patientname contains", "patientname=**SON^"),
        ("MR + pastmonth", "modality=mr&studydate=pastmonth"),
        (
            "date range 1 year, sort patientname",
            "studydate=~2020/01/01~2020/12/31&sort=patientname",
        ),
        ("receiveddate=today", "receiveddate=today"),
        ("no filter, page 100", "offset=5000"),
    ]


def measure(url: str, corpus: Corpus, repeat: int, data_dir: Path) -> list[dict[str, Any]]:
    """Run every query ``repeat`` times through GET /api/studylist on ``url``."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from fastapi.testclient import TestClient

    from pacsbox.app import build_archive
    from pacsbox.archive.users import UserDirectory
    from pacsbox.settings import Settings
    from pacsbox.web.app import create_app

    settings = Settings(
        data_dir=data_dir,
        database_url=url,
        bind_address="127.0.0.1",
        dicom_port=0,
        dicom_tls_port=0,
        http_port=0,
        hl7_port=0,
    )
    archive = build_archive(settings)
    UserDirectory(archive.engine).add(USER[0], "viewer", USER[1])
    auth = {"Authorization": "Basic " + base64.b64encode(":".join(USER).encode()).decode()}
    out = []
    with TestClient(create_app(archive)) as client:
        client.get("/api/studylist?limit=1", headers=auth)  # warm-up: auth cache, pool
        for name, query in queries(corpus):
            server: list[float] = []
            wall: list[float] = []
            total = -1
            for _ in range(repeat):
                t0 = time.perf_counter()
                r = client.get(f"/api/studylist?{query}", headers=auth)
                wall.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"{name}: {r.status_code} {r.text[:200]}")
                server.append(float(r.headers["X-Server-Time-Ms"]))
                total = r.json()["total"]
            row = {
                "query": name,
                "params": query,
                "total": total,
                "server_median_ms": round(statistics.median(server), 1),
                "server_p90_ms": round(_pct(server, 90), 1),
                "wall_median_ms": round(statistics.median(wall), 1),
                "runs": repeat,
            }
            out.append(row)
            print(
                f"  {name:40s} total={total:>7}  server median {row['server_median_ms']:7.1f} ms"
                f"  p90 {row['server_p90_ms']:7.1f}  wall {row['wall_median_ms']:7.1f}",
                flush=True,
            )
    archive.engine.dispose()
    return out


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--studies", type=int, default=100_000)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    ap.add_argument("--mariadb-url", default=DEFAULT_MARIADB)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="5,000 studies, 3 repeats")
    args = ap.parse_args(argv)
    if args.quick:
        args.studies, args.repeat = 5000, 3
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    n = args.studies
    print(f"generating {n} studies / {n * 3} series (one instance per series)", flush=True)
    corpus = generate(n, n * 3, n * 3)
    result: dict[str, Any] = {
        "studies": n,
        "series": corpus.n_series,
        "patients": len({s.patient for s in corpus.studies}),
        "machine": machine_info(),
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="pb-studylist-") as tmp:
        sqlite_path = Path(tmp) / "index.sqlite3"
        sqlite_url = f"sqlite:///{sqlite_path}"
        seconds = fill(sqlite_url, corpus)
        print(f"SQLite filled in {seconds:.1f} s", flush=True)
        for backend in backends:
            print(f"{backend}: (load average {os.getloadavg()[0]:.1f})", flush=True)
            data_dir = Path(tmp) / backend
            if backend == "sqlite":
                rows = measure(sqlite_url, corpus, args.repeat, data_dir)
                result["backends"][backend] = {"fill_s": round(seconds, 1), "queries": rows}
            elif backend == "postgresql":
                with postgres_database(args.postgres_url) as url:
                    copy_s = copy_sqlite_to_postgres(sqlite_path, url)
                    rows = measure(url, corpus, args.repeat, data_dir)
                result["backends"][backend] = {"fill_s": round(copy_s, 1), "queries": rows}
            elif backend == "mariadb":
                with mariadb_database(args.mariadb_url) as url:
                    fill_s = fill(url, corpus)
                    print(f"  MariaDB filled in {fill_s:.1f} s", flush=True)
                    rows = measure(url, corpus, args.repeat, data_dir)
                result["backends"][backend] = {"fill_s": round(fill_s, 1), "queries": rows}
            else:
                raise SystemExit(f"unknown backend {backend!r}")
    result["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    worst = max(
        (q["server_median_ms"], b, q["query"])
        for b, r in result["backends"].items()
        for q in r["queries"]
    )
    print(f"worst server median: {worst[0]} ms ({worst[1]}: {worst[2]}); target < 300 ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""C-FIND latency benchmark: pacsbox (SQLite and PostgreSQL index) side by side with Orthanc.

Two phases, both bounded in time:

1. **Equal size** (``--sizes``, default 2000 studies): a corpus with one tiny instance per
   series is generated (cached in ``--corpus``) and stored with DCMTK ``storescu`` into a fresh
   Orthanc and a fresh ``pacsbox serve`` (its real ingest path); then the queries below run
   against both, interleaved, and the ratios pacsbox/Orthanc are printed.
2. **Large archive** (``--studies``, default 100,000 studies / ~300,000 series / 1,000,000
   instances): pacsbox alone. The index is built without files: the first instance of every
   series goes through the ingest path's own index writer (``IndexTransaction.record_instance``
   with an ``InstanceHeader`` made by ``header._build_header``, so parents, counters,
   ModalitiesInStudy and any search column the writer fills are the ingest path's), the other
   instances are bulk-inserted with the writer's own INSERT statement
   (``IndexWriter.insert_instance_sql``, ``executemany``) and their counters added per series.
   The index is built in SQLite and copied row by row (``COPY``) into a fresh PostgreSQL
   database ``pacsbox_bench_<random>`` (dropped at the end; ``--postgres-url`` names the server).
   The storage files do not exist: C-FIND only reads the index.

Queries (study level unless said): exact PatientID, PatientName ``SMITH*``, StudyDate range of
1 % of the ~10 years, AccessionNumber, ModalitiesInStudy=MR, MR within the 1 % date range, and a
series-level query within one study. Each is measured three ways:

- ``findscu``: wall time of one ``/usr/bin/findscu`` process (start + association + query);
- ``floor``: wall time of ``/usr/bin/echoscu`` against the same server (process start and one
  association), subtracted from the findscu median (``net``);
- ``in-proc``: a pynetdicom SCU in this process that keeps one association per server open for
  all repetitions and times request → final response.

Every server/query pair runs ``--repeat`` times (stopping early when ``--budget`` seconds are
spent on it, after at least 3 runs); servers and queries are interleaved within each round so
both see the same machine noise. Median and p90 are reported; ``--json FILE`` keeps every run.

Example::

    .venv/bin/python bench/query.py --quick
    .venv/bin/python bench/query.py --sizes 2000 --studies 100000 --json /tmp/query.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import (  # noqa: E402 (sibling bench module)
    count_pacsbox_files,
    dcmtk_env,
    free_port,
    machine_info,
    stop_process,
    tree_cpu_seconds,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_CORPUS = BENCH_DIR / ".corpus"
DEFAULT_PACSBOX = REPO_DIR / ".venv" / "bin" / "pacsbox"
HOST = "127.0.0.1"
CALLING_AET = "BENCH"
PACSBOX_AET = "PACSBOX"
ORTHANC_AET = "ORTHANC"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CORPUS_VERSION = 1
SEED = 20261201
FIRST_DAY = dt.date(2016, 12, 1)
DAYS = 3652  # ~10 years of study dates
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

# --------------------------------------------------------------------------- the data


#: modality -> (SOP Class UID, rows, columns, samples, bits allocated, bytes per instance)
MODALITY_FACTS: dict[str, tuple[str, int, int, int, int, int]] = {
    "CT": ("1.2.840.10008.5.1.4.1.1.2", 512, 512, 1, 16, 526_000),
    "MR": ("1.2.840.10008.5.1.4.1.1.4", 256, 256, 1, 16, 133_000),
    "US": ("1.2.840.10008.5.1.4.1.1.6.1", 480, 640, 3, 8, 924_000),
    "CR": ("1.2.840.10008.5.1.4.1.1.1", 2500, 2048, 1, 16, 10_242_000),
    "DX": ("1.2.840.10008.5.1.4.1.1.1.1", 3000, 3000, 1, 16, 18_002_000),
    "MG": ("1.2.840.10008.5.1.4.1.1.1.2", 4084, 3328, 1, 16, 27_184_000),
    "PT": ("1.2.840.10008.5.1.4.1.1.128", 128, 128, 1, 16, 34_000),
    "NM": ("1.2.840.10008.5.1.4.1.1.20", 128, 128, 1, 16, 34_000),
    "XA": ("1.2.840.10008.5.1.4.1.1.12.1", 512, 512, 1, 8, 263_000),
    "SR": ("1.2.840.10008.5.1.4.1.1.88.22", 0, 0, 0, 0, 6_000),
    "PR": ("1.2.840.10008.5.1.4.1.1.11.1", 0, 0, 0, 0, 4_000),
}

#: study kind: (weight, [(modality, min series, max series)], description, body part)
STUDY_KINDS: list[tuple[float, list[tuple[str, int, int]], str, str]] = [
    (0.20, [("CT", 2, 5)], "CT CHEST ABDOMEN", "CHEST"),
    (0.04, [("CT", 2, 4), ("SR", 1, 1)], "CT HEAD WITH REPORT", "HEAD"),
    (0.06, [("MR", 3, 7)], "MR BRAIN", "HEAD"),
    (0.01, [("MR", 3, 6), ("PR", 1, 1)], "MR KNEE", "KNEE"),
    (0.22, [("CR", 1, 3)], "CR CHEST", "CHEST"),
    (0.12, [("DX", 1, 3)], "DX HAND", "HAND"),
    (0.12, [("US", 1, 4)], "US ABDOMEN", "ABDOMEN"),
    (0.10, [("MG", 2, 4)], "MG SCREENING", "BREAST"),
    (0.04, [("PT", 1, 2), ("CT", 1, 2)], "PET CT WHOLE BODY", "WHOLEBODY"),
    (0.04, [("NM", 1, 3)], "NM BONE SCAN", "WHOLEBODY"),
    (0.05, [("XA", 2, 5)], "XA CORONARY", "HEART"),
]

GIVEN = [
    "JOHN",
    "MARY",
    "JAMES",
    "PATRICIA",
    "ROBERT",
    "JENNIFER",
    "MICHAEL",
    "LINDA",
    "WILLIAM",
    "ELIZABETH",
    "DAVID",
    "BARBARA",
    "RICHARD",
    "SUSAN",
    "JOSEPH",
    "JESSICA",
    "THOMAS",
    "SARAH",
    "CHARLES",
    "KAREN",
    "CHRISTOPHER",
    "NANCY",
    "DANIEL",
    "LISA",
    "MATTHEW",
    "BETTY",
    "ANTHONY",
    "MARGARET",
    "MARK",
    "SANDRA",
    "PAUL",
    "ASHLEY",
    "STEVEN",
    "KIMBERLY",
    "ANDREW",
    "EMILY",
    "KENNETH",
    "DONNA",
    "JOSHUA",
    "MICHELLE",
    "KEVIN",
    "CAROL",
    "BRIAN",
    "AMANDA",
    "GEORGE",
    "MELISSA",
    "EDWARD",
    "DEBORAH",
]
_SYLLABLES = [
    "AN",
    "BER",
    "CAR",
    "DEL",
    "FOR",
    "GAR",
    "HAL",
    "JOR",
    "KEL",
    "LAN",
    "MAR",
    "NOR",
    "PER",
    "RAM",
    "SAN",
    "TOR",
    "VAL",
    "WIL",
    "BRO",
    "CHE",
    "DAV",
    "EV",
    "GRA",
    "HOW",
    "JEN",
    "KIM",
    "LOP",
    "MOO",
    "NEL",
    "OWE",
    "PAR",
    "QUI",
    "ROS",
    "STE",
    "THO",
    "WAL",
    "YOU",
    "ZIM",
    "BAL",
    "COR",
    "DUN",
    "FIN",
    "GOR",
    "HUN",
]
_ENDINGS = ["SON", "MAN", "TON", "LEY", "ER", "EZ", "INI", "OVA", "SKI", "BERG", "ING", "WELL"]
SURNAMES = [a + b for a in _SYLLABLES for b in _ENDINGS]  # none starts with SMITH
#: Share of patients whose family name matches SMITH* (SMITH 0.5 %, SMITHERS 0.1 %).
SMITH_SHARE = (("SMITH", 0.005), ("SMITHERS", 0.001))
ACCESSION_PREFIX = "A"


@dataclass
class SeriesSpec:
    uid: str
    number: int
    modality: str
    instances: int


@dataclass
class StudySpec:
    uid: str
    patient: int
    date: str
    time: str
    accession: str
    study_id: str
    description: str
    body_part: str
    referring: str
    series: list[SeriesSpec] = field(default_factory=list)


@dataclass
class PatientSpec:
    pid: str
    name: str
    birth: str
    sex: str


@dataclass
class Corpus:
    patients: list[PatientSpec]
    studies: list[StudySpec]

    @property
    def n_series(self) -> int:
        return sum(len(s.series) for s in self.studies)

    @property
    def n_instances(self) -> int:
        return sum(se.instances for s in self.studies for se in s.series)


def _uid(rng: random.Random) -> str:
    # 2.25 UUID-derived UIDs (PS3.5 §B.2), from the seeded generator: reproducible corpora.
    return f"2.25.{rng.getrandbits(122)}"


def _fix_total(counts: list[int], total: int, rng: random.Random, minimum: int = 1) -> None:
    """Add/remove one at random positions until ``sum(counts) == total`` (each ≥ minimum)."""
    diff = total - sum(counts)
    n = len(counts)
    while diff != 0:
        i = rng.randrange(n)
        if diff > 0:
            counts[i] += 1
            diff -= 1
        elif counts[i] > minimum:
            counts[i] -= 1
            diff += 1


def generate(studies: int, series_total: int, instance_total: int, seed: int = SEED) -> Corpus:
    """A reproducible archive description: patients, studies, series and instance counts.

    Patients have 1-8 studies (about 2 on average); ~0.6 % of them are SMITH^… / SMITHERS^…;
    study dates are uniform over ``DAYS`` days from ``FIRST_DAY``; study kinds follow
    ``STUDY_KINDS`` (so ModalitiesInStudy holds mixes such as CT\\SR, PT\\CT, MR\\PR). Series
    and instance totals are then made exact.
    """
    rng = random.Random(seed)
    patients: list[PatientSpec] = []
    owners: list[int] = []
    while len(owners) < studies:
        p = len(patients)
        roll = rng.random()
        surname = rng.choice(SURNAMES)
        acc = 0.0
        for name, share in SMITH_SHARE:
            acc += share
            if roll < acc:
                surname = name
                break
        birth = FIRST_DAY - dt.timedelta(days=rng.randrange(365 * 2, 365 * 95))
        patients.append(
            PatientSpec(
                pid=f"MRN{(p * 7919 + 104729) % 10_000_000:07d}",
                name=f"{surname}^{rng.choice(GIVEN)}",
                birth=birth.strftime("%Y%m%d"),
                sex=rng.choice("MF"),
            )
        )
        k = min(8, max(1, int(rng.expovariate(1 / 1.6)) + 1))
        owners.extend([p] * k)
    owners = owners[:studies]
    rng.shuffle(owners)

    weights = [k[0] for k in STUDY_KINDS]
    specs: list[StudySpec] = []
    kinds: list[list[str]] = []
    for i in range(studies):
        _, parts, desc, body = rng.choices(STUDY_KINDS, weights)[0]
        mods = [m for m, lo, hi in parts for _ in range(rng.randint(lo, hi))]
        day = FIRST_DAY + dt.timedelta(days=rng.randrange(DAYS))
        specs.append(
            StudySpec(
                uid=_uid(rng),
                patient=owners[i],
                date=day.strftime("%Y%m%d"),
                time=f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
                accession=f"{ACCESSION_PREFIX}{day.year}{i + 1:08d}",
                study_id=str(rng.randrange(1, 99999)),
                description=desc,
                body_part=body,
                referring=f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN)}^^DR",
            )
        )
        kinds.append(mods)
    # exact series total: grow/shrink studies, repeating/removing their last modality
    counts = [len(m) for m in kinds]
    _fix_total(counts, series_total, rng)
    for mods, n in zip(kinds, counts, strict=True):
        while len(mods) < n:
            mods.append(mods[-1] if mods[-1] not in ("SR", "PR") else mods[0])
        del mods[n:]
    inst = [rng.randint(1, 6) for _ in range(series_total)]
    _fix_total(inst, instance_total, rng)
    it = iter(inst)
    for spec, mods in zip(specs, kinds, strict=True):
        for number, modality in enumerate(mods, 1):
            spec.series.append(SeriesSpec(_uid(rng), number, modality, next(it)))
    return Corpus(patients, specs)


def series_keywords(
    corpus: Corpus, study: StudySpec, series: SeriesSpec, tiny: bool = False
) -> dict[str, Any]:
    """The attributes of the first instance of ``series`` (keyword → value)."""
    p = corpus.patients[study.patient]
    sop_class, rows, cols, spp, bits, _ = MODALITY_FACTS[series.modality]
    kw: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 100",
        "ImageType": ["ORIGINAL", "PRIMARY"],
        "SOPClassUID": sop_class,
        "SOPInstanceUID": f"{series.uid}.1",
        "StudyDate": study.date,
        "SeriesDate": study.date,
        "ContentDate": study.date,
        "StudyTime": study.time,
        "SeriesTime": study.time,
        "ContentTime": study.time,
        "AccessionNumber": study.accession,
        "Modality": series.modality,
        "Manufacturer": "PACSBOX BENCH",
        "InstitutionName": "BENCH HOSPITAL",
        "ReferringPhysicianName": study.referring,
        "StationName": f"{series.modality}01",
        "StudyDescription": study.description,
        "SeriesDescription": f"{series.modality} SERIES {series.number}",
        "PatientName": p.name,
        "PatientID": p.pid,
        "PatientBirthDate": p.birth,
        "PatientSex": p.sex,
        "BodyPartExamined": study.body_part,
        "StudyInstanceUID": study.uid,
        "SeriesInstanceUID": series.uid,
        "StudyID": study.study_id,
        "SeriesNumber": series.number,
        "InstanceNumber": 1,
    }
    if rows or (tiny and series.modality not in ("SR", "PR")):
        kw.update(
            SamplesPerPixel=spp or 1,
            PhotometricInterpretation="RGB" if spp == 3 else "MONOCHROME2",
            Rows=8 if tiny else rows,
            Columns=8 if tiny else cols,
            BitsAllocated=bits or 16,
            BitsStored=(bits or 16) if bits == 8 else 12,
            HighBit=((bits or 16) if bits == 8 else 12) - 1,
            PixelRepresentation=0,
        )
        if spp == 3:
            kw["PlanarConfiguration"] = 0
    return kw


_JSON_NUMBER_VRS = {"IS", "US", "UL", "SS", "SL", "FL", "FD", "DS"}


@functools.cache
def _tag_vr(keyword: str) -> tuple[int, str]:
    return int(tag_for_keyword(keyword) or 0), dictionary_VR(keyword)


def json_model(kw: dict[str, Any]) -> str:
    """The DICOM JSON model (PS3.18 §F.2) of ``kw``, as the index stores it."""
    model: dict[str, Any] = {}
    for keyword in sorted(kw, key=lambda k: _tag_vr(k)[0]):
        value = kw[keyword]
        tag, vr = _tag_vr(keyword)
        values = value if isinstance(value, list) else [value]
        if vr == "PN":
            values = [{"Alphabetic": v} for v in values]
        elif vr in _JSON_NUMBER_VRS:
            values = [int(v) for v in values]
        model[f"{tag:08X}"] = {"vr": vr, "Value": values}
    return json.dumps(model, separators=(",", ":"), ensure_ascii=False)


def write_tiny_corpus(corpus: Corpus, directory: Path) -> list[Path]:
    """One tiny Part-10 instance per series (cached with a manifest)."""
    manifest = directory / "manifest.json"
    wanted = {
        "version": CORPUS_VERSION,
        "studies": len(corpus.studies),
        "series": corpus.n_series,
        "seed": SEED,
    }
    if manifest.is_file():
        doc = json.loads(manifest.read_text())
        files = [directory / n for n in doc.get("files", [])]
        if {k: doc.get(k) for k in wanted} == wanted and all(f.is_file() for f in files):
            return files
        for f in files:
            f.unlink(missing_ok=True)
        manifest.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    print(f"writing {corpus.n_series} tiny instances to {directory} ...", flush=True)
    files: list[Path] = []
    for i, study in enumerate(corpus.studies):
        for series in study.series:
            kw = series_keywords(corpus, study, series, tiny=True)
            ds = Dataset()
            for keyword, value in kw.items():
                setattr(ds, keyword, value)
            if "Rows" in kw:
                ds.PixelData = bytes(8 * 8 * kw["SamplesPerPixel"] * kw["BitsAllocated"] // 8)
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = kw["SOPClassUID"]
            ds.file_meta.MediaStorageSOPInstanceUID = kw["SOPInstanceUID"]
            path = directory / f"s{i:06d}_{series.number}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    manifest.write_text(json.dumps({**wanted, "files": [f.name for f in files]}))
    return files


# --------------------------------------------------------------------------- queries


@dataclass
class Query:
    name: str
    level: str
    keys: dict[str, str]  # keyword -> value ("" = return key)

    def dataset(self) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = self.level
        for keyword, value in self.keys.items():
            setattr(ds, keyword, value)
        return ds

    def findscu_args(self) -> list[str]:
        args = ["-k", f"QueryRetrieveLevel={self.level}"]
        for keyword, value in self.keys.items():
            args += ["-k", f"{keyword}={value}" if value else keyword]
        return args


STUDY_RETURN_KEYS = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
]
SERIES_RETURN_KEYS = [
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
]


def _study_query(name: str, **match: str) -> Query:
    keys = {k: "" for k in STUDY_RETURN_KEYS}
    keys.update(match)
    return Query(name, "STUDY", keys)


def build_queries(corpus: Corpus) -> list[Query]:
    """The measured queries, with values taken from ``corpus`` (reproducible)."""
    # a patient with two or more studies; a study with several series; a 1 % date range
    per_patient: dict[int, int] = {}
    for s in corpus.studies:
        per_patient[s.patient] = per_patient.get(s.patient, 0) + 1
    mid = corpus.studies[len(corpus.studies) // 2]
    patient = next(
        (
            s.patient
            for s in corpus.studies[len(corpus.studies) // 3 :]
            if per_patient[s.patient] >= 2
        ),
        mid.patient,
    )
    study = next((s for s in corpus.studies[len(corpus.studies) // 4 :] if len(s.series) >= 4), mid)
    start = FIRST_DAY + dt.timedelta(days=int(DAYS * 0.55))
    end = start + dt.timedelta(days=math.ceil(DAYS * 0.01) - 1)
    date_range = f"{start:%Y%m%d}-{end:%Y%m%d}"
    series_keys = {k: "" for k in SERIES_RETURN_KEYS}
    series_keys["StudyInstanceUID"] = study.uid
    return [
        _study_query("PatientID", PatientID=corpus.patients[patient].pid),
        _study_query("PatientName SMITH*", PatientName="SMITH*"),
        _study_query("StudyDate 1 %", StudyDate=date_range),
        _study_query(
            "AccessionNumber", AccessionNumber=corpus.studies[len(corpus.studies) // 5].accession
        ),
        _study_query("ModalitiesInStudy=MR", ModalitiesInStudy="MR"),
        _study_query("MR + StudyDate 1 %", ModalitiesInStudy="MR", StudyDate=date_range),
        Query("series in study", "SERIES", series_keys),
    ]


def expected_matches(corpus: Corpus, query: Query) -> int:
    """How many responses a correct SCP returns for ``query`` on ``corpus``."""
    k = query.keys
    if query.level == "SERIES":
        return sum(len(s.series) for s in corpus.studies if s.uid == k["StudyInstanceUID"])
    n = 0
    for s in corpus.studies:
        p = corpus.patients[s.patient]
        if k["PatientID"] and p.pid != k["PatientID"]:
            continue
        if k["PatientName"] and not p.name.upper().startswith(k["PatientName"].rstrip("*")):
            continue
        if k["AccessionNumber"] and s.accession != k["AccessionNumber"]:
            continue
        if k["StudyDate"]:
            lo, hi = k["StudyDate"].split("-")
            if not lo <= s.date <= hi:
                continue
        if k["ModalitiesInStudy"] and k["ModalitiesInStudy"] not in {
            se.modality for se in s.series
        }:
            continue
        n += 1
    return n


# --------------------------------------------------------------------------- index build


def _header(kw: dict[str, Any]) -> Any:
    """An InstanceHeader made by the ingest path's own mapping (header._build_header)."""
    from pacsbox.archive import header

    def text(keyword: str, maxlen: int) -> str:
        value = kw.get(keyword, "")
        value = "\\".join(value) if isinstance(value, list) else str(value)
        return value[:maxlen]

    def integer(keyword: str) -> int | None:
        value = kw.get(keyword)
        return int(value) if value is not None else None

    return header._build_header(text, integer, kw["SpecificCharacterSet"], json_model(kw))


def default_sqlite_url(data_dir: Path) -> str:
    """The SQLite URL ``pacsbox serve`` uses for ``data_dir`` when no database_url is set."""
    from pacsbox.settings import Settings

    url = Settings(data_dir=data_dir, dicom_port=0, dicom_tls_port=0, http_port=0, hl7_port=0)
    assert url.database_url
    return url.database_url


def build_sqlite_index(corpus: Corpus, data_dir: Path, batch_series: int = 2000) -> float:
    """Create pacsbox's default SQLite index in ``data_dir`` holding ``corpus``; return the
    seconds it took."""
    from pacsbox.archive.index.db import open_database
    from pacsbox.archive.index.writer import IndexWriter
    from pacsbox.archive.storage import INSTANCE_SUFFIX

    started = time.monotonic()
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = open_database(default_sqlite_url(data_dir))
    writer = IndexWriter(engine)
    pending: list[tuple[StudySpec, SeriesSpec]] = [
        (study, series) for study in corpus.studies for series in study.series
    ]
    for start in range(0, len(pending), batch_series):
        chunk = pending[start : start + batch_series]
        extra_rows: list[tuple[Any, ...]] = []
        series_bumps: list[tuple[int, int]] = []
        study_bumps: dict[int, list[int]] = {}
        patient_bumps: dict[int, int] = {}
        with writer.transaction() as tx:
            for study, series in chunk:
                kw = series_keywords(corpus, study, series)
                hdr = _header(kw)
                size = MODALITY_FACTS[series.modality][5]
                key = f"{study.uid}/{series.uid}/{hdr.sop_instance_uid}{INSTANCE_SUFFIX}"
                row = tx.record_instance(
                    hdr,
                    cache=None,
                    transfer_syntax_uid=ExplicitVRLittleEndian,
                    file_path=key,
                    file_size=size,
                    storage_format="part10",
                    linked=False,
                    source_ae=CALLING_AET,
                )
                more = series.instances - 1
                if more <= 0:
                    continue
                now = tx.now()
                first_uid = hdr.sop_instance_uid
                for n in range(2, series.instances + 1):
                    uid = f"{series.uid}.{n}"
                    attrs = hdr.attributes_json.replace(f'"{first_uid}"', f'"{uid}"').replace(
                        '"00200013":{"vr":"IS","Value":[1]}',
                        f'"00200013":{{"vr":"IS","Value":[{n}]}}',
                    )
                    inst = dict(hdr.instance, instance_number=n)
                    extra_rows.append(
                        (
                            uid,
                            hdr.sop_class_uid,
                            row.parents.series_id,
                            *(inst[c] for c in _instance_cols()[3:16]),
                            ExplicitVRLittleEndian,
                            "part10",
                            f"{study.uid}/{series.uid}/{uid}{INSTANCE_SUFFIX}",
                            False,
                            size,
                            CALLING_AET,
                            now,
                            attrs,
                        )
                    )
                series_bumps.append((more, row.parents.series_id))
                bump = study_bumps.setdefault(row.parents.study_id, [0, 0])
                bump[0] += more
                bump[1] += more * size
                patient_bumps[row.parents.patient_id] = (
                    patient_bumps.get(row.parents.patient_id, 0) + more
                )
            cur = tx.cur
            cur.executemany(writer.insert_instance_sql, extra_rows)
            cur.executemany(
                "UPDATE series SET num_instances = num_instances + ? WHERE id = ?", series_bumps
            )
            cur.executemany(
                "UPDATE study SET num_instances = num_instances + ?, size_bytes = size_bytes + ? "
                "WHERE id = ?",
                [(a, b, sid) for sid, (a, b) in study_bumps.items()],
            )
            cur.executemany(
                "UPDATE patient SET num_instances = num_instances + ? WHERE id = ?",
                [(a, pid) for pid, a in patient_bumps.items()],
            )
        if (start // batch_series) % 25 == 0:
            print(
                f"  index: {start + len(chunk)}/{len(pending)} series "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )
    writer.close()
    engine.dispose()
    return time.monotonic() - started


def _instance_cols() -> tuple[str, ...]:
    from pacsbox.archive.index import writer

    return writer._INSTANCE_COLS


TABLES = ("patient", "study", "series", "instance", "alembic_version")


def copy_sqlite_to_postgres(sqlite_path: Path, pg_url: str) -> float:
    """Migrate the PostgreSQL database, then COPY every index row from SQLite into it."""
    import psycopg
    from sqlalchemy.engine import make_url

    from pacsbox.archive.index.db import open_database

    started = time.monotonic()
    engine = open_database(pg_url)  # schema (and alembic_version) from the migrations
    engine.dispose()
    url = make_url(pg_url)
    conninfo = psycopg.conninfo.make_conninfo(
        host=url.host or "",
        port=url.port or 5432,
        user=url.username or "",
        password=url.password or "",
        dbname=url.database or "",
    )
    src = sqlite3.connect(sqlite_path)
    with psycopg.connect(conninfo) as pg:
        for table in TABLES[:4]:
            cols = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
            pg_cols = {
                r[0]
                for r in pg.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                    (table,),
                )
            }
            if set(cols) != pg_cols:
                raise RuntimeError(f"{table}: SQLite columns {cols} differ from PostgreSQL's")
            quoted = ", ".join(f'"{c}"' for c in cols)
            with pg.cursor() as cur, cur.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
                for row in src.execute(f"SELECT {quoted} FROM {table} ORDER BY id"):
                    copy.write_row(row)
            pg.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"
            )
            print(f"  postgres: {table} copied ({time.monotonic() - started:.0f} s)", flush=True)
        pg.commit()
        pg.autocommit = True
        pg.execute("VACUUM ANALYZE")
    src.close()
    return time.monotonic() - started


@contextlib.contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """Create ``pacsbox_bench_<random>`` on the server, yield its URL, drop only that one."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"pacsbox_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0"))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                )
            )
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        admin.dispose()


# --------------------------------------------------------------------------- servers


@dataclass
class Target:
    """A running SCP to query."""

    name: str
    aet: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    http_port: int = 0
    note: str = ""


def _popen(cmd: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(  # noqa: S603 (fixed argv)
            list(cmd), env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )


def orthanc_config(workdir: Path, port: int, http_port: int, **extra: Any) -> dict[str, Any]:
    """A private Orthanc configuration: loopback clients, SQLite index in ``workdir``."""
    config = {
        "Name": "pacsbox-bench",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "StorageCompression": False,
        "Plugins": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AET,
        "DicomPort": port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowMove": True,
        "DicomAlwaysAllowGet": True,
        "DicomThreadsCount": 4,
        "SaveJobs": False,
    }
    config.update(extra)
    return config


def start_orthanc(args: argparse.Namespace, workdir: Path, **extra: Any) -> Target:
    port, http_port = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(orthanc_config(workdir, port, http_port, **extra), indent=1))
    log = workdir / "orthanc.log"
    proc = _popen([str(args.orthanc_bin), str(path)], dcmtk_env(), log)
    return Target("orthanc", ORTHANC_AET, port, proc, workdir, log, http_port=http_port)


def pacsbox_env(
    data_dir: Path, port: int, database_url: str | None, workers: int
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSBOX_")}
    config = data_dir.parent / "pacsbox-bench.toml"
    config.write_text("# settings come from PACSBOX_* variables (bench)\n")
    env.update(
        PACSBOX_CONFIG=str(config),
        PACSBOX_DATA_DIR=str(data_dir),
        PACSBOX_BIND_ADDRESS=HOST,
        PACSBOX_DICOM_PORT=str(port),
        PACSBOX_DICOM_TLS_PORT="0",
        PACSBOX_HTTP_PORT="0",
        PACSBOX_HL7_PORT="0",
        PACSBOX_PERMISSIVE_AES="true",
        PACSBOX_PERMISSIVE_AES_ENABLED="true",
    )
    if workers:
        env["PACSBOX_WORKERS"] = str(workers)
    if database_url:
        env["PACSBOX_DATABASE_URL"] = database_url
    return env


def start_pacsbox(
    args: argparse.Namespace, name: str, workdir: Path, database_url: str | None
) -> Target:
    port = free_port()
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    env = pacsbox_env(data, port, database_url, args.workers)
    log = workdir / "pacsbox.log"
    proc = _popen([str(args.pacsbox_bin), "serve"], env, log)
    return Target(name, PACSBOX_AET, port, proc, workdir, log)


def echo_ms(args: argparse.Namespace, target: Target) -> float | None:
    """Wall ms of one echoscu (process start + association + C-ECHO), None on failure."""
    cmd = [str(args.dcmtk_bin / "echoscu"), "-aet", CALLING_AET, "-aec", target.aet]
    cmd += ["-to", "5", HOST, str(target.port)]
    started = time.perf_counter()
    try:
        res = subprocess.run(cmd, env=dcmtk_env(), capture_output=True, timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return None
    ms = (time.perf_counter() - started) * 1000
    return ms if res.returncode == 0 else None


def http_json(port: int, path: str, body: Any = None, timeout: float = 60) -> Any:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data)
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback)
        return json.load(resp)


def wait_ready(args: argparse.Namespace, target: Target, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            raise RuntimeError(
                f"{target.name} exited ({target.proc.returncode}):\n"
                + target.log.read_text(errors="replace")[-2000:]
            )
        if echo_ms(args, target) is not None:
            if not target.http_port:
                return
            with contextlib.suppress(OSError, ValueError):
                http_json(target.http_port, "/system", timeout=5)
                return
        time.sleep(0.3)
    raise RuntimeError(f"{target.name} did not answer C-ECHO within {timeout:.0f} s")


def store_files(
    args: argparse.Namespace, target: Target, files: list[Path], parts: int = 2
) -> float:
    """Send ``files`` with ``parts`` parallel storescu processes; return seconds."""
    size = math.ceil(len(files) / parts)
    procs = []
    started = time.perf_counter()
    for i in range(parts):
        chunk = files[i * size : (i + 1) * size]
        if not chunk:
            continue
        cmd = [str(args.dcmtk_bin / "storescu"), "-aet", CALLING_AET, "-aec", target.aet]
        cmd += [HOST, str(target.port), *map(str, chunk)]
        procs.append(_popen(cmd, dcmtk_env(), target.workdir / f"storescu-{i}.log"))
    for proc in procs:
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -1
        if rc != 0:
            raise RuntimeError(f"storescu into {target.name} exited with {rc}")
    return time.perf_counter() - started


def stored_count(target: Target) -> int:
    """Instances the target holds: Orthanc's /statistics, or pacsbox's stored files."""
    if target.http_port:
        return int(http_json(target.http_port, "/statistics")["CountInstances"])
    return count_pacsbox_files(target.workdir / "data")


# --------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    target: str
    query: str
    method: str  # findscu | floor | inproc
    ms: float
    matches: int = -1


def findscu_ms(args: argparse.Namespace, target: Target, query: Query) -> float | None:
    cmd = [str(args.dcmtk_bin / "findscu"), "-S", "-aet", CALLING_AET, "-aec", target.aet]
    cmd += ["-to", "30", HOST, str(target.port), *query.findscu_args()]
    started = time.perf_counter()
    try:
        res = subprocess.run(
            cmd,
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=args.timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None
    ms = (time.perf_counter() - started) * 1000
    if res.returncode != 0:
        print(
            f"    findscu {target.name} {query.name}: rc {res.returncode} "
            f"{res.stderr.decode(errors='replace')[-300:]}",
            flush=True,
        )
        return None
    return ms


class InProcClient:
    """A pynetdicom SCU holding one association open to one target."""

    def __init__(self, target: Target) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=CALLING_AET)
        ae.add_requested_context(STUDY_ROOT_FIND)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
        self.ae = ae
        self.assoc = ae.associate(HOST, target.port, ae_title=target.aet)
        if not self.assoc.is_established:
            raise RuntimeError(f"no association with {target.name}")
        sock = self.assoc.dul.socket.socket  # Nagle off on our side too
        with contextlib.suppress(OSError, AttributeError):
            import socket as _socket

            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)

    def find(self, query: Query) -> tuple[float, int, int]:
        """(ms, pending responses, final status)."""
        ds = query.dataset()
        started = time.perf_counter()
        n, final = 0, -1
        for status, _identifier in self.assoc.send_c_find(ds, STUDY_ROOT_FIND):
            if status is None:
                final = -2
                break
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                n += 1
            else:
                final = code
        return (time.perf_counter() - started) * 1000, n, final

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.assoc.release()
        self.ae.shutdown()


def measure(
    args: argparse.Namespace, targets: list[Target], queries: list[Query], phase: str
) -> list[Sample]:
    """findscu + echoscu rounds, then in-process rounds; interleaved; time-bounded."""
    samples: list[Sample] = []
    spent: dict[tuple[str, str, str], float] = {}

    def over(t: Target, q: str, m: str, rnd: int) -> bool:
        return rnd >= 3 and spent.get((t.name, q, m), 0.0) > args.budget

    for rnd in range(args.repeat):
        print(f"  {phase}: findscu round {rnd + 1}/{args.repeat}", flush=True)
        for t in targets:
            ms = echo_ms(args, t)
            if ms is not None:
                samples.append(Sample(t.name, "(echo)", "floor", ms))
            for q in queries:
                if over(t, q.name, "findscu", rnd):
                    continue
                ms = findscu_ms(args, t, q)
                if ms is not None:
                    samples.append(Sample(t.name, q.name, "findscu", ms))
                    key = (t.name, q.name, "findscu")
                    spent[key] = spent.get(key, 0.0) + ms / 1000
    clients: dict[str, InProcClient] = {}
    try:
        for t in targets:
            clients[t.name] = InProcClient(t)
        for rnd in range(args.repeat):
            for t in targets:
                for q in queries:
                    if over(t, q.name, "inproc", rnd):
                        continue
                    ms, n, final = clients[t.name].find(q)
                    if final != 0:
                        print(f"    in-proc {t.name} {q.name}: final status {final:#06x}")
                        continue
                    samples.append(Sample(t.name, q.name, "inproc", ms, n))
                    key = (t.name, q.name, "inproc")
                    spent[key] = spent.get(key, 0.0) + ms / 1000
    finally:
        for c in clients.values():
            c.close()
    return samples


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Row:
    phase: str
    studies: int
    target: str
    query: str
    expected: int
    matches: int
    runs: int
    findscu_med: float
    findscu_p90: float
    floor_med: float
    net_med: float
    inproc_med: float
    inproc_p90: float
    inproc_runs: int


def summarise(
    phase: str,
    studies: int,
    samples: list[Sample],
    targets: list[Target],
    queries: list[Query],
    corpus: Corpus,
) -> list[Row]:
    rows = []
    for t in targets:
        floor = [s.ms for s in samples if s.target == t.name and s.method == "floor"]
        floor_med = statistics.median(floor) if floor else float("nan")
        for q in queries:
            f = [
                s.ms
                for s in samples
                if (s.target, s.query, s.method) == (t.name, q.name, "findscu")
            ]
            ip = [s for s in samples if (s.target, s.query, s.method) == (t.name, q.name, "inproc")]
            ipm = [s.ms for s in ip]
            fmed = statistics.median(f) if f else float("nan")
            rows.append(
                Row(
                    phase,
                    studies,
                    t.name,
                    q.name,
                    expected_matches(corpus, q),
                    ip[0].matches if ip else -1,
                    len(f),
                    fmed,
                    pct(f, 0.9),
                    floor_med,
                    fmed - floor_med,
                    statistics.median(ipm) if ipm else float("nan"),
                    pct(ipm, 0.9),
                    len(ipm),
                )
            )
    return rows


def print_rows(rows: list[Row]) -> None:
    head = (
        f"{'phase':<7} {'studies':>7} {'server':<16} {'query':<22} {'match':>6} {'exp':>6} "
        f"{'findscu med':>11} {'p90':>7} {'floor':>6} {'net':>7} {'in-proc med':>11} {'p90':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.phase:<7} {r.studies:>7} {r.target:<16} {r.query:<22} {r.matches:>6} "
            f"{r.expected:>6} {r.findscu_med:>11.1f} {r.findscu_p90:>7.1f} {r.floor_med:>6.1f} "
            f"{r.net_med:>7.1f} {r.inproc_med:>11.1f} {r.inproc_p90:>7.1f}"
        )


def print_ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """pacsbox/Orthanc latency ratios (< 1: pacsbox faster) per study count and query."""
    out = []
    by = {(r.studies, r.target, r.query): r for r in rows}
    print("\nRatios pacsbox/Orthanc (latency; < 1 means pacsbox is faster)")
    for r in rows:
        if r.target == "orthanc":
            continue
        o = by.get((r.studies, "orthanc", r.query))
        if o is None:
            continue
        ratio = {
            "studies": r.studies,
            "target": r.target,
            "query": r.query,
            "findscu": r.findscu_med / o.findscu_med,
            "net": r.net_med / o.net_med if o.net_med > 0 else float("nan"),
            "inproc": r.inproc_med / o.inproc_med,
        }
        out.append(ratio)
        print(
            f"  {r.studies:>6} {r.target:<16} {r.query:<22} findscu {ratio['findscu']:.2f}  "
            f"net {ratio['net']:.2f}  in-proc {ratio['inproc']:.2f}"
        )
    return out


# --------------------------------------------------------------------------- phases


def shape(studies: int) -> tuple[int, int]:
    """Series and instance totals for ``studies`` (the 100k/300k/1M proportions)."""
    return studies * 3, studies * 10


def equal_size_phase(args: argparse.Namespace, studies: int, tmp: Path) -> tuple[list[Row], dict]:
    series_total, _ = shape(studies)
    corpus = generate(studies, series_total, series_total)  # one tiny instance per series
    files = write_tiny_corpus(corpus, args.corpus / f"query-{studies}")
    queries = build_queries(corpus)
    targets: list[Target] = []
    info: dict[str, Any] = {"studies": studies, "series": series_total, "instances": len(files)}
    pg_ctx = postgres_database(args.postgres_url) if "postgresql" in args.equal_backends else None
    try:
        pg_url = pg_ctx.__enter__() if pg_ctx else None
        targets.append(start_orthanc(args, tmp / f"orthanc-{studies}"))
        for backend in args.equal_backends:
            url = pg_url if backend == "postgresql" else None
            targets.append(
                start_pacsbox(args, f"pacsbox-{backend}", tmp / f"pb-{backend}-{studies}", url)
            )
        for t in targets:
            wait_ready(args, t)
            secs = store_files(args, t, files)
            info[f"load_s_{t.name}"] = round(secs, 1)
            held = stored_count(t)
            info[f"stored_{t.name}"] = held
            print(
                f"  sent {len(files)} instances to {t.name} in {secs:.1f} s; it holds {held}",
                flush=True,
            )
            if held != len(files):
                failed = [
                    line
                    for log in sorted(t.workdir.glob("storescu-*.log"))
                    for line in log.read_text(errors="replace").splitlines()
                    if line.startswith(("E:", "W:"))
                ]
                print("  storescu reported:\n    " + "\n    ".join(failed[:20]), flush=True)
        samples = measure(args, targets, queries, f"{studies} studies")
        for t in targets:
            info[f"cpu_s_{t.name}"] = round(tree_cpu_seconds(t.proc.pid), 1)
        rows = summarise("equal", studies, samples, targets, queries, corpus)
        info["samples"] = [asdict(s) for s in samples]
        return rows, info
    finally:
        for t in targets:
            stop_process(t.proc)
        if pg_ctx:
            pg_ctx.__exit__(None, None, None)


def large_phase(args: argparse.Namespace, tmp: Path) -> tuple[list[Row], dict]:
    studies = args.studies
    series_total, instance_total = shape(studies)
    print(
        f"generating {studies} studies / {series_total} series / {instance_total} instances",
        flush=True,
    )
    corpus = generate(studies, series_total, instance_total)
    queries = build_queries(corpus)
    info: dict[str, Any] = {
        "studies": studies,
        "series": corpus.n_series,
        "instances": corpus.n_instances,
        "patients": len({s.patient for s in corpus.studies}),
    }
    sqlite_dir = tmp / "pb-sqlite-large" / "data"
    info["build_sqlite_s"] = round(build_sqlite_index(corpus, sqlite_dir), 1)
    print(f"  SQLite index built in {info['build_sqlite_s']} s", flush=True)
    targets: list[Target] = []
    pg_ctx = postgres_database(args.postgres_url) if "postgresql" in args.large_backends else None
    try:
        pg_url = pg_ctx.__enter__() if pg_ctx else None
        if pg_url:
            info["copy_postgres_s"] = round(
                copy_sqlite_to_postgres(
                    Path(default_sqlite_url(sqlite_dir).removeprefix("sqlite:///")), pg_url
                ),
                1,
            )
        if "sqlite" in args.large_backends:
            targets.append(start_pacsbox(args, "pacsbox-sqlite", sqlite_dir.parent, None))
        if pg_url:
            targets.append(start_pacsbox(args, "pacsbox-postgresql", tmp / "pb-pg-large", pg_url))
        for t in targets:
            wait_ready(args, t)
        samples = measure(args, targets, queries, f"{studies} studies")
        rows = summarise("large", studies, samples, targets, queries, corpus)
        info["samples"] = [asdict(s) for s in samples]
        return rows, info
    finally:
        for t in targets:
            stop_process(t.proc)
        if pg_ctx:
            pg_ctx.__exit__(None, None, None)


def tool_versions(args: argparse.Namespace) -> dict[str, str]:
    out = {}
    for name, cmd in {
        "findscu": [str(args.dcmtk_bin / "findscu"), "--version"],
        "orthanc": [str(args.orthanc_bin), "--version"],
    }.items():
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
            out[name] = (res.stdout or res.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError) as exc:
            out[name] = f"unknown ({exc})"
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--studies",
        type=int,
        default=100_000,
        help="studies in the large pacsbox-only index (0: skip; default 100000)",
    )
    p.add_argument(
        "--sizes",
        default="2000",
        help="comma list of study counts for pacsbox vs Orthanc (''; skip)",
    )
    p.add_argument("--repeat", type=int, default=15, help="rounds per query (default 15)")
    p.add_argument(
        "--budget",
        type=float,
        default=20.0,
        help="seconds per server/query/method after which rounds stop (min 3 runs)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small and short: --sizes 300 --studies 5000 --repeat 5",
    )
    p.add_argument(
        "--equal-backends",
        default="sqlite",
        help="pacsbox index backends at equal size (sqlite,postgresql)",
    )
    p.add_argument(
        "--large-backends",
        default="sqlite,postgresql",
        help="pacsbox index backends for --studies (sqlite,postgresql)",
    )
    p.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES,
        help="PostgreSQL server (a database pacsbox_bench_<random> is made there)",
    )
    p.add_argument("--workers", type=int, default=0, help="PACSBOX_WORKERS (default: per core)")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="tiny-corpus cache")
    p.add_argument("--pacsbox-bin", type=Path, default=DEFAULT_PACSBOX)
    p.add_argument("--dcmtk-bin", type=Path, default=Path("/usr/bin"))
    p.add_argument("--orthanc-bin", type=Path, default=Path("/usr/sbin/Orthanc"))
    p.add_argument("--timeout", type=float, default=300, help="limit for one subprocess, s")
    p.add_argument("--tmp-dir", default=None, help="parent of the temporary directories")
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    p.add_argument("--json", type=Path, default=None, help="write all results to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.studies, args.repeat = "300", 5000, 5
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.equal_backends = [b for b in args.equal_backends.split(",") if b]
    args.large_backends = [b for b in args.large_backends.split(",") if b]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("findscu", "echoscu", "storescu"):
        if not (args.dcmtk_bin / tool).exists():
            sys.exit(f"{args.dcmtk_bin / tool} not found")
    tmp = Path(tempfile.mkdtemp(prefix="bench-query-", dir=args.tmp_dir))
    rows: list[Row] = []
    infos: list[dict] = []
    old_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        print(f"uptime: {os.getloadavg()}", flush=True)
        for studies in args.sizes:
            print(f"equal size: {studies} studies (pacsbox vs Orthanc)", flush=True)
            r, info = equal_size_phase(args, studies, tmp)
            rows += r
            infos.append(info)
        if args.studies:
            print(f"large: {args.studies} studies (pacsbox)", flush=True)
            r, info = large_phase(args, tmp)
            rows += r
            infos.append(info)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\nC-FIND latency, ms (median / p90; net = findscu median - echoscu floor median)")
    print_rows(rows)
    ratios = print_ratios(rows)
    print(f"\nload average at the end: {os.getloadavg()}")
    if args.json:
        doc = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "tools": tool_versions(args),
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rows": [asdict(r) for r in rows],
            "ratios": ratios,
            "phases": infos,
        }
        args.json.write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    bad = [r for r in rows if r.matches != r.expected]
    for r in bad:
        print(
            f"MISMATCH {r.target} {r.studies} {r.query}: {r.matches} responses, expected "
            f"{r.expected}"
        )
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    sys.exit(main())

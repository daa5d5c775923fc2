"""``pacsbox import`` (SPEC A9, M2) and ``pacsbox check`` (SPEC R1) through the CLI.

The CLI runs as a subprocess on the same data folder and database as the ``archive`` fixture
(PACSBOX_* variables), so exit codes and output are the real ones; the fixture's Python API
is used to set up stored instances and to look at the index afterwards. ``check`` tests run on
SQLite, PostgreSQL and MariaDB where the index is written (missing rows removed, size
mismatches re-indexed); file-only cases (orphans, temp files) and import tests run on SQLite.

Output is read with ``--json`` where the test needs exact lists; the text output is checked
for the words an operator reads ("consistent", "missing", "orphan", ...).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from pacsbox.app import Archive
from pacsbox.archive.index.models import Series, Study
from pacsbox.archive.index.writer import INSTANCE, counts
from pacsbox.settings import Settings
from tests.helpers import VENV_BIN, dataset_bytes, have, make_ct, server_env, write_study

EXPLICIT_LE = "1.2.840.10008.1.2.1"


# -- helpers ------------------------------------------------------------------------------
def pacsbox(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI against the fixture's archive (same data_dir and database)."""
    env = server_env(Path(settings.data_dir), 0, settings.database_url)
    env["COLUMNS"] = "400"  # keep rich from folding long paths in tables
    return subprocess.run(
        [str(VENV_BIN / "pacsbox"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_json(settings: Settings, *args: str) -> tuple[int, dict]:
    result = pacsbox(settings, "check", "--json", *args)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def rows(archive: Archive) -> dict[str, tuple[str, int, bool]]:
    """SOP Instance UID -> (file_path, file_size, linked)."""
    with archive.engine.connect() as conn:
        result = conn.execute(
            select(
                INSTANCE.c.sop_instance_uid,
                INSTANCE.c.file_path,
                INSTANCE.c.file_size,
                INSTANCE.c.linked,
            )
        ).all()
    return {uid: (path, size, bool(linked)) for uid, path, size, linked in result}


def stored_files(archive: Archive) -> list[Path]:
    return sorted(p for p in archive.store.root.rglob("*") if p.is_file())


def uid_of(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def corrupt_dicom(path: Path) -> Path:
    """A Part-10 file cut in the middle of an element of its header."""
    make_ct().save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"Doe^John") + 3])
    return path


def store_study(archive: Archive, tmp_path: Path, n: int = 4) -> dict[str, Path]:
    """Store ``n`` instances through ingest; SOP Instance UID -> source file."""
    sources = write_study(tmp_path / "src", n_series=2, per_series=n // 2)
    out = {}
    for path in sources:
        stored = archive.ingest.store_file(path, source_ae="TEST")
        out[stored.sop_instance_uid] = path
    return out


def age(path: Path, seconds: float = 3600) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


# -- import -------------------------------------------------------------------------------
def test_import_folder_reports_failures(sqlite_archive: Archive, tmp_path: Path):
    settings = sqlite_archive.settings
    src = tmp_path / "incoming"
    study = write_study(src / "deep" / "er", n_series=2, per_series=3)  # recursion
    (src / "notes.txt").write_text("not DICOM at all\n")
    corrupt = corrupt_dicom(src / "corrupt.dcm")
    errors = tmp_path / "errors"

    result = pacsbox(settings, "import", str(src), "--errors-to", str(errors))

    assert result.returncode == 1, result.stdout + result.stderr
    assert "6 stored, 0 replaced, 0 kept (duplicates), 2 failed" in result.stdout
    # the failed list names each file with a reason
    lines = result.stdout.splitlines()
    for name, reason in (("notes.txt", "not a DICOM file"), ("corrupt.dcm", "truncated")):
        line = next((ln for ln in lines if name in ln), None)
        assert line is not None, f"{name} not in the failed list:\n{result.stdout}"
        assert reason in line, line
    # copies of the failed files, byte for byte; the originals stay where they were
    assert sorted(p.name for p in errors.iterdir()) == ["corrupt.dcm", "notes.txt"]
    assert (errors / "corrupt.dcm").read_bytes() == corrupt.read_bytes()
    assert (errors / "notes.txt").read_text() == "not DICOM at all\n"
    assert corrupt.exists() and (src / "notes.txt").exists()
    # the study is stored (copied) with its data set bytes unchanged
    index = rows(sqlite_archive)
    assert set(index) == {uid_of(p) for p in study}
    for path in study:
        key, size, linked = index[uid_of(path)]
        assert not linked
        stored = sqlite_archive.store.path(key)
        assert stored.stat().st_size == size
        assert dataset_bytes(stored) == dataset_bytes(path)
    assert counts(sqlite_archive.engine) == {
        "patients": 1,
        "studies": 1,
        "series": 2,
        "instances": 6,
    }

    # importing the good files again replaces them (default duplicate policy) and succeeds
    again = pacsbox(settings, "import", str(src / "deep"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 stored, 6 replaced, 0 kept (duplicates), 0 failed" in again.stdout
    assert len(stored_files(sqlite_archive)) == 6


@pytest.mark.skipif(not have("dcmmkdir"), reason="DCMTK dcmmkdir is not installed")
def test_import_dicomdir_takes_exactly_the_referenced_files(
    sqlite_archive: Archive, tmp_path: Path
):
    settings = sqlite_archive.settings
    media = tmp_path / "media"
    study = generate_uid()
    referenced: dict[str, Path] = {}
    for s in range(2):
        series = generate_uid()
        folder = media / "DICOM" / "ST1" / f"SE{s + 1}"  # PS3.10 file IDs: <= 8 chars, A-Z0-9_
        folder.mkdir(parents=True)
        for i in range(3):
            ds = make_ct(study, series, instance_number=i + 1)
            ds.SeriesNumber = s + 1
            path = folder / f"IM{i + 1}"
            ds.save_as(path, enforce_file_format=True)
            referenced[ds.SOPInstanceUID] = path
    made = subprocess.run(
        ["dcmmkdir", "+r", "+id", str(media), "+D", str(media / "DICOMDIR")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    # files in the media folder that the DICOMDIR does not reference must not be imported
    extra = make_ct(study)
    extra.save_as(media / "DICOM" / "ST1" / "SE1" / "IM9", enforce_file_format=True)
    (media / "README.TXT").write_text("not part of the file set\n")

    result = pacsbox(settings, "import", str(media / "DICOMDIR"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 stored, 0 replaced, 0 kept (duplicates), 0 failed" in result.stdout
    index = rows(sqlite_archive)
    assert set(index) == set(referenced)
    assert extra.SOPInstanceUID not in index
    for uid, path in referenced.items():
        assert dataset_bytes(sqlite_archive.store.path(index[uid][0])) == dataset_bytes(path)

    # a folder holding a DICOMDIR is imported through it, too
    result = pacsbox(settings, "import", str(media))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 stored, 6 replaced, 0 kept (duplicates), 0 failed" in result.stdout
    assert set(rows(sqlite_archive)) == set(referenced)


def test_import_broken_dicomdir_is_reported_not_a_crash(sqlite_archive: Archive, tmp_path: Path):
    media = tmp_path / "media"
    write_study(media / "DICOM", n_series=1, per_series=2)
    (media / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM" + b"garbage" * 20)

    result = pacsbox(sqlite_archive.settings, "import", str(media))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "0 stored, 0 replaced, 0 kept (duplicates), 1 failed" in result.stdout
    assert "DICOMDIR" in result.stdout
    assert rows(sqlite_archive) == {}


def test_import_link_indexes_in_place(sqlite_archive: Archive, tmp_path: Path):
    settings = sqlite_archive.settings
    src = tmp_path / "nas"
    paths = write_study(src, n_series=1, per_series=4)
    before = {p: p.read_bytes() for p in paths}

    result = pacsbox(settings, "import", "--link", str(src))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 stored" in result.stdout

    index = rows(sqlite_archive)
    assert len(index) == 4
    for path in paths:
        key, size, linked = index[uid_of(path)]
        assert linked
        assert Path(key) == path.resolve()
        assert size == path.stat().st_size
        assert path.read_bytes() == before[path]  # untouched
    assert not [p for p in stored_files(sqlite_archive) if p.suffix == ".dcm"], "copied"

    rc, report = check_json(settings, "--grace", "0")
    assert rc == 0 and report["status"] == "consistent", report

    # a linked file that changed: reported, and repair re-indexes it IN PLACE (never moves
    # or deletes the user's file)
    changed = paths[0]
    with open(changed, "ab") as fh:
        fh.write(b"\x00" * 16)
    rc, report = check_json(settings, "--grace", "0")
    assert rc == 1 and report["size_mismatches"] == 1, report
    assert report["size_mismatch"][0]["file"] == str(changed.resolve())
    result = pacsbox(settings, "check", "--repair", "--grace", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert changed.exists(), "repair deleted a linked (user-owned) file"
    key, size, linked = rows(sqlite_archive)[uid_of(changed)]
    assert linked and Path(key) == changed.resolve() and size == changed.stat().st_size
    assert not [p for p in stored_files(sqlite_archive) if p.suffix == ".dcm"]

    # a linked file that disappeared: reported missing, repair drops its row
    gone = paths[1]
    gone_uid = uid_of(gone)
    gone.unlink()
    rc, report = check_json(settings, "--grace", "0")
    assert rc == 1 and report["missing"] == [str(gone.resolve())], report
    result = pacsbox(settings, "check", "--repair", "--grace", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert gone_uid not in rows(sqlite_archive)
    rc, report = check_json(settings, "--grace", "0")
    assert rc == 0 and report["status"] == "consistent", report


def test_import_missing_path_is_an_error(sqlite_archive: Archive, tmp_path: Path):
    result = pacsbox(sqlite_archive.settings, "import", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


# -- check --------------------------------------------------------------------------------
def test_check_consistent_archive(archive: Archive, tmp_path: Path):
    store_study(archive, tmp_path)
    result = pacsbox(archive.settings, "check", "--grace", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "consistent"
    rc, report = check_json(archive.settings, "--grace", "0")
    assert rc == 0
    assert report["instances"] == report["files"] == 4
    assert report["status"] == "consistent"


def test_check_missing_file(archive: Archive, tmp_path: Path):
    sources = store_study(archive, tmp_path)
    uid = sorted(sources)[0]
    key = rows(archive)[uid][0]
    archive.store.path(key).unlink()

    result = pacsbox(archive.settings, "check")
    assert result.returncode == 1
    assert f"missing: {key}" in result.stdout
    assert "INCONSISTENT" in result.stdout
    rc, report = check_json(archive.settings)
    assert rc == 1 and report["missing"] == [key] and report["missing_files"] == 1

    result = pacsbox(archive.settings, "check", "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "repaired" in result.stdout
    assert uid not in rows(archive) and len(rows(archive)) == 3
    with archive.engine.connect() as conn:
        assert conn.execute(select(Study.__table__.c.num_instances)).scalar_one() == 3
        assert sorted(conn.execute(select(Series.__table__.c.num_instances)).scalars()) == [1, 2]
    rc, report = check_json(archive.settings, "--grace", "0")
    assert rc == 0 and report["status"] == "consistent", report


def test_check_orphan_file_is_indexed_by_repair(sqlite_archive: Archive, tmp_path: Path):
    store_study(sqlite_archive, tmp_path)
    ds = make_ct(rows=8, cols=8, patient_id="ORPHAN")
    orphan = sqlite_archive.store.root / "dropped-here.dcm"  # not where ingest would put it
    ds.save_as(orphan, enforce_file_format=True)
    source_bytes = dataset_bytes(orphan)

    # a young file is left alone by default: the server may be about to index it
    rc, report = check_json(sqlite_archive.settings)
    assert rc == 0 and report["orphan_files"] == 0, report
    # strict
    result = pacsbox(sqlite_archive.settings, "check", "--grace", "0")
    assert result.returncode == 1
    assert "orphan:  dropped-here.dcm" in result.stdout
    # an old one is reported with the default grace period too
    age(orphan)
    rc, report = check_json(sqlite_archive.settings)
    assert rc == 1 and report["orphans"] == ["dropped-here.dcm"], report

    result = pacsbox(sqlite_archive.settings, "check", "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    index = rows(sqlite_archive)
    assert ds.SOPInstanceUID in index and len(index) == 5
    stored = sqlite_archive.store.path(index[ds.SOPInstanceUID][0])
    assert stored.is_file() and not orphan.exists()  # moved to its proper place
    assert dataset_bytes(stored) == source_bytes
    rc, report = check_json(sqlite_archive.settings, "--grace", "0")
    assert rc == 0 and report["status"] == "consistent", report


def test_check_orphan_that_is_not_dicom_is_quarantined(sqlite_archive: Archive, tmp_path: Path):
    store_study(sqlite_archive, tmp_path)
    junk = sqlite_archive.store.root / "junk.dcm"
    junk.write_bytes(b"this is not a DICOM file" * 10)
    rc, report = check_json(sqlite_archive.settings, "--grace", "0")
    assert rc == 1 and report["orphans"] == ["junk.dcm"]

    result = pacsbox(sqlite_archive.settings, "check", "--repair", "--grace", "0")
    assert result.returncode == 1, "an orphan that cannot be indexed is not repaired"
    assert "not repaired" in result.stdout and "junk.dcm" in result.stdout
    assert not junk.exists()
    quarantined = Path(sqlite_archive.settings.data_dir) / "quarantine" / "junk.dcm"
    assert quarantined.read_bytes() == b"this is not a DICOM file" * 10
    rc, report = check_json(sqlite_archive.settings, "--grace", "0")
    assert rc == 0 and report["status"] == "consistent", report
    assert len(rows(sqlite_archive)) == 4


def test_check_stale_temp_file(sqlite_archive: Archive, tmp_path: Path):
    sources = store_study(sqlite_archive, tmp_path)
    key = rows(sqlite_archive)[sorted(sources)[0]][0]
    final = sqlite_archive.store.path(key)
    temp = final.with_name(f".{final.name}.4242.1.1.tmp")  # the name an interrupted put leaves
    temp.write_bytes(final.read_bytes()[:1000])
    rel = temp.relative_to(sqlite_archive.store.root).as_posix()

    rc, report = check_json(sqlite_archive.settings)
    assert rc == 0 and report["temp_files"] == 0, "a young temp file may be a write in progress"
    result = pacsbox(sqlite_archive.settings, "check", "--grace", "0")
    assert result.returncode == 1
    assert "temp_files       1" in result.stdout
    assert rel in result.stdout
    age(temp)
    rc, report = check_json(sqlite_archive.settings)
    assert rc == 1 and report["temp"] == [rel], report
    assert report["orphan_files"] == 0, "a temp file is never an orphan instance"

    result = pacsbox(sqlite_archive.settings, "check", "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not temp.exists() and final.exists()
    assert len(rows(sqlite_archive)) == 4
    rc, report = check_json(sqlite_archive.settings, "--grace", "0")
    assert rc == 0 and report["status"] == "consistent", report


def test_check_size_mismatch(archive: Archive, tmp_path: Path):
    sources = store_study(archive, tmp_path)
    uid = sorted(sources)[0]
    key, size, _ = rows(archive)[uid]
    path = archive.store.path(key)
    with open(path, "ab") as fh:  # trailing padding (FFFC,FFFC) changes the size only
        fh.write(b"\xfc\xff\xfc\xffOB\x00\x00\x08\x00\x00\x00" + b"\x00" * 8)

    result = pacsbox(archive.settings, "check")
    assert result.returncode == 1
    assert "size_mismatches  1" in result.stdout
    assert f"size mismatch: {key}" in result.stdout
    rc, report = check_json(archive.settings)
    assert report["size_mismatch"] == [
        {"file": key, "indexed_size": size, "actual_size": size + 20}
    ], report

    result = pacsbox(archive.settings, "check", "--repair")
    assert result.returncode == 0, result.stdout + result.stderr
    new_key, new_size, _ = rows(archive)[uid]
    assert archive.store.path(new_key).stat().st_size == new_size
    assert dataset_bytes(archive.store.path(new_key)) == dataset_bytes(sources[uid]) + (
        b"\xfc\xff\xfc\xffOB\x00\x00\x08\x00\x00\x00" + b"\x00" * 8
    )
    rc, report = check_json(archive.settings, "--grace", "0")
    assert rc == 0 and report["status"] == "consistent", report


def test_check_repair_never_indexes_a_truncated_file(sqlite_archive: Archive, tmp_path: Path):
    """R1 "no half-written file is indexed": a stored file cut short (inside Pixel Data) is a
    size mismatch; repair must not re-index it as a good instance but set it aside."""
    sources = store_study(sqlite_archive, tmp_path)
    uid = sorted(sources)[0]
    key, size, _ = rows(sqlite_archive)[uid]
    path = sqlite_archive.store.path(key)
    path.write_bytes(path.read_bytes()[: size - 100])

    rc, report = check_json(sqlite_archive.settings)
    assert rc == 1 and report["size_mismatches"] == 1
    result = pacsbox(sqlite_archive.settings, "check", "--repair")
    assert result.returncode == 1, "a truncated file cannot be repaired"
    assert "not repaired" in result.stdout
    assert uid not in rows(sqlite_archive), "the truncated file was re-indexed"
    assert (Path(sqlite_archive.settings.data_dir) / "quarantine" / path.name).is_file()
    rc, report = check_json(sqlite_archive.settings, "--grace", "0")
    assert rc == 0 and report["status"] == "consistent", report


def test_check_everything_at_once(archive: Archive, tmp_path: Path):
    """Missing + orphan + temp in one archive: one repair run fixes all and exits 0."""
    sources = store_study(archive, tmp_path)
    index = rows(archive)
    uids = sorted(sources)
    archive.store.path(index[uids[0]][0]).unlink()
    extra = tmp_path / "extra.dcm"
    make_ct(rows=8, cols=8).save_as(extra, enforce_file_format=True)
    shutil.copy(extra, archive.store.root / "extra.dcm")
    (archive.store.root / ".x.dcm.1.1.1.tmp").write_bytes(b"partial")

    rc, report = check_json(archive.settings, "--grace", "0")
    assert rc == 1
    assert (report["missing_files"], report["orphan_files"], report["temp_files"]) == (1, 1, 1)
    result = pacsbox(archive.settings, "check", "--repair", "--grace", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "repaired" in result.stdout.splitlines()[-1]
    rc, report = check_json(archive.settings, "--grace", "0")
    assert rc == 0 and report["instances"] == report["files"] == 4, report

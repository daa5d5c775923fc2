"""Import folders and DICOMDIR file sets (SPEC A9, M2) through the one ingest path.

A DICOMDIR (PS3.10 §8, PS3.3 F.2) is read for its Referenced File IDs; any other path is
walked recursively and every regular file is offered to ingest (non-DICOM files are reported,
not fatal). ``link`` indexes files where they are instead of copying them.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from pacsbox.archive.audit import StoreBatch
from pacsbox.archive.ingest import Ingest, IngestRefused


@dataclass
class ImportReport:
    stored: int = 0
    replaced: int = 0
    kept: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0


def dicomdir_files(dicomdir: Path) -> Iterator[Path]:
    """Files referenced by a DICOMDIR's directory records (Referenced File ID, (0004,1500))."""
    ds = dcmread(dicomdir)
    if "DirectoryRecordSequence" not in ds:
        raise ValueError(f"{dicomdir} has no Directory Record Sequence (0004,1220)")
    base = dicomdir.parent
    for record in ds.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        if any(p in ("..", ".", "") or "/" in p or "\\" in p for p in parts):
            continue  # a file set never points outside itself
        candidate = base.joinpath(*parts)
        if not candidate.exists():
            # media written on case-insensitive systems: try a case-insensitive match
            candidate = _case_insensitive(base, parts) or candidate
        yield candidate


def _dicomdir_or_itself(dicomdir: Path) -> list[Path]:
    """The DICOMDIR's referenced files; the DICOMDIR itself if it cannot be read, so that the
    import reports it as failed (with ingest's reason) instead of stopping with a traceback."""
    try:
        return list(dicomdir_files(dicomdir))
    except Exception:
        return [dicomdir]


def _case_insensitive(base: Path, parts: list[str]) -> Path | None:
    current = base
    for part in parts:
        try:
            names = {n.lower(): n for n in os.listdir(current)}
        except OSError:
            return None
        name = names.get(part.lower())
        if name is None:
            return None
        current = current / name
    return current


def collect(paths: list[Path]) -> Iterator[Path]:
    """Every file to import: DICOMDIR references, or all files under folders (recursive)."""
    for path in paths:
        if path.is_dir():
            dicomdir = next(
                (path / n for n in ("DICOMDIR", "dicomdir") if (path / n).is_file()), None
            )
            if dicomdir is not None:
                yield from _dicomdir_or_itself(dicomdir)
                continue
            for dirpath, dirnames, files in os.walk(path):
                dirnames.sort()
                for name in sorted(files):
                    if name.upper() == "DICOMDIR":
                        continue
                    yield Path(dirpath) / name
        elif path.name.upper() == "DICOMDIR":
            yield from _dicomdir_or_itself(path)
        else:
            yield path


def import_paths(
    ingest: Ingest,
    paths: list[Path],
    *,
    link: bool = False,
    errors_to: Path | None = None,
    progress: Callable[[Path, str], None] | None = None,
) -> ImportReport:
    report = ImportReport()
    # audited like any ingest: one ``store`` event per study, written at the end
    audit = getattr(ingest, "audit", None)
    batch = StoreBatch(audit, f"CLI:{_os_user()}", "local", "import")
    try:
        _import_into(ingest, paths, report, batch, link, errors_to, progress)
    finally:
        batch.flush()
    return report


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


def _import_into(
    ingest: Ingest,
    paths: list[Path],
    report: ImportReport,
    batch: StoreBatch,
    link: bool,
    errors_to: Path | None,
    progress: Callable[[Path, str], None] | None,
) -> None:
    for path in collect(paths):
        try:
            result = ingest.store_file(path, source_ae="IMPORT", link=link)
        except IngestRefused as exc:
            batch.failed("", f"{path.name}: {exc.message}")
            report.failed.append((str(path), exc.message))
            if errors_to is not None:
                _copy_failed(path, errors_to)
            if progress:
                progress(path, "failed")
            continue
        except OSError as exc:
            report.failed.append((str(path), f"cannot read: {exc.strerror or exc}"))
            if progress:
                progress(path, "failed")
            continue
        report.bytes += result.size
        batch.stored(result.study_instance_uid, result.outcome, result.size)
        if result.outcome == "replaced":
            report.replaced += 1
        elif result.outcome == "kept":
            report.kept += 1
        else:
            report.stored += 1
        if progress:
            progress(path, result.outcome)


def _copy_failed(path: Path, errors_to: Path) -> None:
    errors_to.mkdir(parents=True, exist_ok=True)
    target = errors_to / path.name
    n = 1
    while target.exists():
        target = errors_to / f"{path.stem}.{n}{path.suffix}"
        n += 1
    with contextlib.suppress(OSError):
        shutil.copy2(path, target)

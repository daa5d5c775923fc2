"""Consistency between the index and the stored files (SPEC R1): ``pacsbox check [--repair]``.

Finds instance rows whose file is missing or has another size, files no row points to
(orphans, e.g. written just before a crash and never acknowledged), and temp files of
interrupted writes. ``repair`` removes rows of missing files, re-indexes orphans and files
whose size changed, and deletes stale temp files. Files younger than ``grace`` seconds are
left alone: a running server may be between writing and indexing them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from pacsbox.archive.index import writer
from pacsbox.archive.ingest import Ingest, IngestRefused

INSTANCE = writer.INSTANCE


@dataclass
class CheckReport:
    instances: int = 0
    files: int = 0
    missing: list[str] = field(default_factory=list)
    size_mismatch: list[tuple[str, int, int]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    repaired: int = 0
    unrepaired: list[tuple[str, str]] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return (
            len(self.missing) + len(self.size_mismatch) + len(self.orphans) + len(self.temp_files)
        )

    @property
    def consistent_after(self) -> bool:
        return self.problems == 0 or (self.repaired == self.problems and not self.unrepaired)


def _old_enough(path: Path, grace: float, now: float) -> bool:
    try:
        return now - path.stat().st_mtime >= grace
    except OSError:
        return False


def check(
    ingest: Ingest,
    *,
    repair: bool = False,
    grace: float = 60.0,
    quarantine: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> CheckReport:
    store = ingest.store
    report = CheckReport()
    now = time.time()
    indexed: set[str] = set()
    bad_rows: list[tuple[int, str, bool, bool]] = []  # (row id, key, reindex?, linked?)
    with ingest.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=5000).execute(
            select(INSTANCE.c.id, INSTANCE.c.file_path, INSTANCE.c.file_size, INSTANCE.c.linked)
        )
        for row_id, key, size, linked in result:
            report.instances += 1
            if not linked:
                indexed.add(key)
            path = store.locate(key, linked)
            try:
                actual = path.stat().st_size
            except OSError:
                report.missing.append(key)
                bad_rows.append((row_id, key, False, bool(linked)))
                continue
            if actual != size:
                report.size_mismatch.append((key, size, actual))
                bad_rows.append((row_id, key, True, bool(linked)))
    if progress:
        progress(f"checked {report.instances} index rows")
    orphan_paths: list[Path] = []
    for key in store.iter_keys():
        report.files += 1
        if key not in indexed:
            path = store.path(key)
            if _old_enough(path, grace, now):
                report.orphans.append(key)
                orphan_paths.append(path)
    stale_temps = [p for p in store.iter_temp_files() if _old_enough(p, grace, now)]
    report.temp_files = [str(p.relative_to(store.root)) for p in stale_temps]
    if progress:
        progress(f"checked {report.files} files")
    if not repair:
        return report

    linked_paths: list[Path] = []
    for row_id, key, reindex, linked in bad_rows:
        with ingest.writer.transaction() as tx:
            tx.remove_instance(row_id)
        if not reindex:
            report.repaired += 1
        elif linked:
            linked_paths.append(Path(key))
        else:
            orphan_paths.append(store.path(key))
    for path in linked_paths:
        # A linked file belongs to the user: index it again in place, never move or delete it.
        try:
            ingest.store_file(path, source_ae="", link=True)
        except IngestRefused as exc:
            report.unrepaired.append((str(path), exc.message))
            continue
        report.repaired += 1
    for path in orphan_paths:
        try:
            result_key = ingest.store_file(path, source_ae="").key
        except IngestRefused as exc:
            report.unrepaired.append((str(path), exc.message))
            if quarantine is not None:
                quarantine.mkdir(parents=True, exist_ok=True)
                shutil.move(str(path), quarantine / path.name)
            continue
        if store.path(result_key) != path:
            path.unlink(missing_ok=True)  # its header said it belongs elsewhere; now it is there
        report.repaired += 1
    for temp in stale_temps:
        temp.unlink(missing_ok=True)
        report.repaired += 1
    return report

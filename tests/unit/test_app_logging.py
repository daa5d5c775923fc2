"""app.SharedFileHandler: one log file written by several processes, rotated (SPEC A10)."""

from __future__ import annotations

import logging
import multiprocessing as mp
from pathlib import Path

from pacsbox.app import LOG_FORMAT, SharedFileHandler


def _writer(path: str, name: str, lines: int, max_bytes: int) -> None:
    handler = SharedFileHandler(Path(path), max_bytes=max_bytes, backups=1000)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    log = logging.getLogger(f"test.shared.{name}")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    for i in range(lines):
        log.info("line %s %05d %s", name, i, "x" * 60)
    handler.close()


def test_processes_share_and_rotate_without_losing_or_mixing_lines(tmp_path: Path) -> None:
    path = tmp_path / "pacsbox.log"
    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(target=_writer, args=(str(path), name, 400, 8192)) for name in ("a", "b", "c")
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    files = [path, *sorted(tmp_path.glob("pacsbox.log.*"))]
    files = [f for f in files if not f.name.endswith(".lock")]
    assert len(files) > 10  # rotated many times
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for f in files:
        text = f.read_text()
        assert text.endswith("\n")
        for line in text.splitlines():
            # every line whole: timestamp, level, logger, message
            head, _, message = line.partition(": line ")
            assert " INFO " in head and head.endswith("test.shared." + message[0])
            name, number, filler = message.split(" ")
            assert filler == "x" * 60
            seen[name].append(int(number))
    for numbers in seen.values():
        assert sorted(numbers) == list(range(400))  # nothing lost, nothing twice
    for f in files[1:]:  # rotated files stay near the limit: another process may have
        # appended its one line between its own size check and the rotation
        assert f.stat().st_size <= 8192 + 3 * 200


def test_reopens_after_external_rotation(tmp_path: Path) -> None:
    path = tmp_path / "pacsbox.log"
    handler = SharedFileHandler(path, max_bytes=1 << 20, backups=3)
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "first", None, None)
    handler.handle(record)
    path.rename(tmp_path / "pacsbox.log.1")  # another process rotated it
    handler.handle(logging.LogRecord("t", logging.INFO, __file__, 1, "second", None, None))
    handler.close()
    assert (tmp_path / "pacsbox.log.1").read_text() == "first\n"
    assert path.read_text() == "second\n"

"""Settings an administrator may change while pacsbox runs (``PATCH /api/settings``).

The change is written to the TOML config file (the one ``serve`` loaded) and every process
picks it up from there: each worker process (DICOM and HTTP) runs one watcher thread that
looks at the file's modification time every ``POLL_SECONDS`` and, when it changed, re-reads
and validates the file and applies the keys of :data:`RUNTIME_KEYS` to its live
:class:`~pacsbox.settings.Settings` objects (and, through callbacks, to services that copied a
value, such as the ingest policies). The file is the one source of truth, so edits made by hand
are picked up the same way. Keys pinned by a ``PACSBOX_*`` environment variable or a
command-line override win over the file and cannot be changed here; every other key needs a
restart (ports, paths, database, TLS, workers, CORS middleware, logging…).

The file is edited line by line (comments and the order of keys are kept: ``key = value``
lines are replaced in place, new keys appended) and replaced atomically (temporary file,
fsync, rename).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import tomllib
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pacsbox.settings import Settings, SettingsError, load_settings

log = logging.getLogger("pacsbox.settings")

#: Settings that every process reads where it uses them (per association, query, request),
#: so changing the live value is safe.
RUNTIME_KEYS: tuple[str, ...] = (
    "duplicate_policy",
    "patient_id_conflict",
    "permissive_aes",
    "permissive_aes_enabled",
    "pn_case_insensitive",
    "relational_queries",
    "stow_max_bytes",
    "session_idle_timeout",
    "wado_url_credentials",
    "wado_user",
    "institution_name",
    "url_login_enabled",
    "otp_ttl_seconds",
    "share_default_days",
    "share_validity_from",
)
POLL_SECONDS = 2.0

Changes = dict[str, Any]
OnChange = Callable[[Changes], None]


class RuntimeSettingsError(ValueError):
    """A change that cannot be made at runtime; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def validate_changes(settings: Settings, changes: dict[str, Any]) -> Changes:
    """The changes, validated and converted like the config file's values would be."""
    if not isinstance(changes, dict) or not changes:
        raise RuntimeSettingsError("send a JSON object of settings to change")
    for key in changes:
        if key not in Settings.model_fields:
            raise RuntimeSettingsError(f"unknown setting {str(key)[:64]!r}")
        if key not in RUNTIME_KEYS:
            raise RuntimeSettingsError(
                f"{key} requires restart: edit the config file and restart pacsbox "
                "(settings changeable at runtime: " + ", ".join(RUNTIME_KEYS) + ")"
            )
        if key in settings._pinned:
            raise RuntimeSettingsError(
                f"{key} is set by the environment variable PACSBOX_{key.upper()} (or a "
                "command-line option), which wins over the config file; change it there",
                409,
            )
    values = {k: getattr(settings, k) for k in Settings.model_fields}
    values.update(changes)
    try:
        checked = Settings.model_validate(values)
    except Exception as exc:  # ValidationError: name the field and why
        errors = getattr(exc, "errors", None)
        if callable(errors):
            text = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors()
            )
        else:
            text = str(exc)
        raise RuntimeSettingsError(f"bad value: {text}"[:500]) from exc
    return {k: getattr(checked, k) for k in changes}


def toml_value(value: Any) -> str:
    """A TOML literal for a setting value (bool, int, float, str, list of str, None)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


_KEY_LINE = re.compile(r"^(\s*)([A-Za-z0-9_]+)(\s*=\s*)(.*)$")


def update_config_file(path: Path, changes: Changes) -> None:
    """Set ``changes`` in the TOML file at ``path`` (created if absent), keeping everything
    else, and replace the file atomically. ``None`` removes the key (back to its default)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = text.splitlines()
    done: set[str] = set()
    out: list[str] = []
    skip_array = False
    for line in lines:
        if skip_array:  # the rest of a multi-line array being replaced
            if "]" in line.split("#", 1)[0]:
                skip_array = False
            continue
        m = _KEY_LINE.match(line)
        if m and m.group(2) in changes and not line.lstrip().startswith("#"):
            key = m.group(2)
            rest = m.group(4)
            comment = ""
            if rest.startswith("[") and "]" not in rest.split("#", 1)[0]:
                skip_array = True
            elif "#" in rest and not rest.lstrip().startswith(('"', "'")):
                comment = "  " + rest[rest.index("#") :]
            elif "#" in rest:  # a string value, then maybe a comment after its closing quote
                q = rest.lstrip()[0]
                end = rest.find(q, rest.index(q) + 1)
                after = rest[end + 1 :] if end > 0 else ""
                if "#" in after:
                    comment = "  " + after[after.index("#") :]
            if key in done:
                continue
            done.add(key)
            if changes[key] is None:
                continue
            out.append(f"{m.group(1)}{key}{m.group(3)}{toml_value(changes[key])}{comment}")
            continue
        out.append(line)
    added = [k for k in changes if k not in done and changes[k] is not None]
    if added:
        out.append("# changed at runtime (PATCH /api/settings)")
        out += [f"{k} = {toml_value(changes[k])}" for k in added]
    new_text = "\n".join(out) + "\n"
    tomllib.loads(new_text)  # never write a file that does not parse
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pacsbox-config-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new_text)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def apply_changes(settings: Settings, changes: Changes) -> Changes:
    """Set the runtime keys of ``changes`` that differ on ``settings``; returns those."""
    applied = {}
    for key, value in changes.items():
        if key in RUNTIME_KEYS and key not in settings._pinned and getattr(settings, key) != value:
            setattr(settings, key, value)
            applied[key] = value
    return applied


class _Watcher:
    """One thread per process: re-reads the config file when it changes."""

    def __init__(self) -> None:
        self.entries: list[tuple[weakref.ref[Settings], OnChange | None]] = []
        self.stamps: dict[Path, tuple[int, int, int] | None] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = 0
        self.wake = threading.Event()

    def add(self, settings: Settings, on_change: OnChange | None) -> None:
        path = settings._config_file
        if path is None:
            return
        with self.lock:
            if self.pid != os.getpid():  # forked: the parent's thread is not running here
                self.thread = None
                self.pid = os.getpid()
            self.entries.append((weakref.ref(settings), on_change))
            self.stamps.setdefault(path, _stamp(path))
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._run, name="pacsbox-settings-watch", daemon=True
                )
                self.thread.start()

    def _run(self) -> None:
        while True:
            self.wake.wait(POLL_SECONDS)
            self.wake.clear()
            try:
                self.check()
            except Exception:
                log.exception("settings watcher")

    def check(self) -> None:
        with self.lock:
            self.entries = [(r, cb) for r, cb in self.entries if r() is not None]
            entries = list(self.entries)
            live_paths = {s._config_file for r, _ in entries if (s := r()) is not None}
            self.stamps = {p: t for p, t in self.stamps.items() if p in live_paths}
            changed_paths = []
            for path, old in list(self.stamps.items()):
                now = _stamp(path)
                if now != old:
                    self.stamps[path] = now
                    changed_paths.append(path)
        for path in changed_paths:
            try:
                fresh = load_settings(path)
            except SettingsError as exc:
                log.warning("config file %s changed but is not valid; kept: %s", path, exc)
                continue
            wanted = {k: getattr(fresh, k) for k in RUNTIME_KEYS}
            for ref, on_change in entries:
                live = ref()
                if live is None or live._config_file != path:
                    continue
                applied = apply_changes(live, wanted)
                if applied:
                    log.info("settings changed at runtime: %s", applied)
                    if on_change is not None:
                        try:
                            on_change(applied)
                        except Exception:
                            log.exception("applying changed settings")


_WATCHER = _Watcher()


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def watch_settings(settings: Settings, on_change: OnChange | None = None) -> None:
    """Keep ``settings`` (loaded from a config file) in step with the file's runtime keys;
    ``on_change(changes)`` runs after each change. No-op for settings made in code."""
    _WATCHER.add(settings, on_change)


def check_now() -> None:
    """Run one check at once (the route that wrote the file; tests)."""
    _WATCHER.check()


def ingest_updater(ingest: Any) -> OnChange:
    """A callback that copies the ingest policies into an :class:`Ingest`."""

    def update(changes: Changes) -> None:
        for key in ("duplicate_policy", "patient_id_conflict"):
            if key in changes:
                setattr(ingest, key, changes[key])

    return update

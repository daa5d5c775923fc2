"""The sendtopacs background service (SPEC S7): the folder monitors (SPEC S6) plus a local HTTP
API and the web UI on top of it.

HTTP API (JSON; every route under ``/api`` except ``/api/health`` needs the credentials when
they are set):

* ``GET /api/status`` — version, monitors, job counts; ``GET /api/monitor`` — the journal's
  recent files.
* ``GET|PUT /api/settings`` — the settings file (secrets never returned; validated before it
  is written; the monitors restart with the new folders).
* ``GET|POST /api/devices``, ``PUT|DELETE /api/devices/{name}``, ``POST
  /api/devices/{name}/echo`` — destination devices and C-ECHO (PS3.7 §9.1.5).
* ``GET /api/worklist/devices``, ``POST /api/worklist/search`` — patient / worklist search
  (:mod:`pacsbox.sendtopacs.worklist`: MWL / Q/R C-FIND, HTTP).
* ``GET|POST|DELETE /api/files`` (multipart upload, or ``POST /api/files/paths`` with local
  paths), ``DELETE /api/files/{id}`` — the file list.
* ``POST /api/convert`` and ``POST /api/send`` — start a job (202) with typed ``patient`` data
  or the ``worklist_ref`` of a search result (required when a worklist device is "worklist
  only", SPEC S2); ``GET /api/jobs[/{id}]`` —
  per-file state and progress and the job's log; ``GET /api/jobs/{id}/objects/{uid}`` — a
  converted object.

Security (SPEC S7, R3): bound to 127.0.0.1 by default; a request from an address outside
``allowed_ips`` (addresses or networks) gets 403; when a user name and password are set every
``/api`` request needs HTTP Basic (RFC 7617) — 401 with ``WWW-Authenticate`` otherwise, 429
after five wrong attempts from one address (:class:`AuthThrottle`) — and a
weak password (< 12 characters, or missing an upper-case letter, a lower-case letter, a digit
or a special character, or containing the user name) is refused when it is configured. The
``Host`` header must name a loopback or configured address (no DNS rebinding) and a request
with an ``Origin`` of another site is refused (no cross-site requests from a browser that
cached the credentials). One service per machine: an ``flock`` on the lock file; a second
start exits with a message naming the running one.

Temporary files (uploads, converted objects) live in the temp folder: removed as soon as they
are no longer used (``clean_unused_temp``) and all of them when the service stops
(``clean_temp_on_exit``). ``remove_sent_from_list`` drops successfully sent files from the
list.
"""

import base64
import contextlib
import copy
import datetime as dt
import fcntl
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pacsbox.sendtopacs.settings import Device, Settings, SettingsError, load

log = logging.getLogger("pacsbox.sendtopacs.service")

DEFAULT_PORT = 8765
WORKLIST_REF_SECONDS = 3600  #: how long a search result can be picked for sending
WEBUI = Path(__file__).with_name("webui")


class ServiceError(ValueError):
    """A service setting is not valid."""


class AlreadyRunning(RuntimeError):
    """Another service holds the lock."""


def password_problems(password: str, username: str = "") -> list[str]:
    """Why a password is too weak (empty list = strong enough), SPEC S7."""
    problems = []
    if len(password) < 12:
        problems.append("at least 12 characters")
    if not re.search(r"[A-Z]", password):
        problems.append("an upper-case letter")
    if not re.search(r"[a-z]", password):
        problems.append("a lower-case letter")
    if not re.search(r"[0-9]", password):
        problems.append("a digit")
    if not re.search(r"[^A-Za-z0-9]", password):
        problems.append("a special character")
    if username and username.lower() in password.lower():
        problems.append("not containing the user name")
    if len(set(password)) < 6:
        problems.append("at least 6 different characters")
    return problems


def check_password(password: str, username: str = "") -> None:
    problems = password_problems(password, username)
    if problems:
        raise ServiceError("the API password is too weak: it needs " + ", ".join(problems))


def _state_home() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "pacsbox" / "sendtopacs"


@dataclass
class ServiceConfig:
    """The ``service`` section of the settings file."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allowed_ips: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])
    username: str = ""
    password: str = ""  #: plain (pre-seeded files); checked for strength
    password_hash: str = ""  #: argon2 (written by ``sendtopacs service set-credentials``)
    state_dir: str = ""  #: journal + monitor objects ("" = ~/.local/state/pacsbox/sendtopacs)
    temp_dir: str = ""  #: uploads + converted objects ("" = <state_dir>/temp)
    lock_file: str = ""  #: "" = <system temp>/pacsbox-sendtopacs.lock (one per machine)
    clean_temp_on_exit: bool = True
    clean_unused_temp: bool = True
    remove_sent_from_list: bool = False
    max_upload_mb: int = 4096

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> "ServiceConfig":
        data = dict(data or {})
        if not isinstance(data, dict):
            raise ServiceError("service: must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ServiceError(f"service: unknown key(s) {', '.join(unknown)}")
        try:
            return cls(**data).validate()
        except TypeError as exc:
            raise ServiceError(f"service: {exc}") from exc

    def validate(self) -> "ServiceConfig":
        if not 0 <= int(self.port) <= 65535:
            raise ServiceError(f"service: port {self.port} not in 0..65535")
        self.port = int(self.port)
        if not isinstance(self.allowed_ips, list) or not self.allowed_ips:
            raise ServiceError("service: allowed_ips must be a non-empty list")
        for entry in self.allowed_ips:
            try:
                ipaddress.ip_network(str(entry), strict=False)
            except ValueError as exc:
                raise ServiceError(f"service: allowed_ips: {entry!r} is not an address") from exc
        if (self.password or self.password_hash) and not self.username:
            raise ServiceError("service: a password needs a username")
        if self.username and not (self.password or self.password_hash):
            raise ServiceError("service: a username needs a password (set-credentials)")
        if self.username and (":" in self.username or not self.username.isprintable()):
            raise ServiceError("service: the username may not contain ':' or control characters")
        if self.password:
            check_password(self.password, self.username)
        if self.password_hash and not self.password_hash.startswith("$argon2"):
            raise ServiceError("service: password_hash must be an argon2 hash")
        if not 1 <= int(self.max_upload_mb) <= 1 << 20:
            raise ServiceError("service: max_upload_mb out of range")
        return self

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    @property
    def secured(self) -> bool:
        return bool(self.username)

    def paths(self) -> tuple[Path, Path, Path]:
        state = Path(self.state_dir) if self.state_dir else _state_home()
        temp = Path(self.temp_dir) if self.temp_dir else state / "temp"
        lock = (
            Path(self.lock_file)
            if self.lock_file
            else Path(tempfile.gettempdir()) / "pacsbox-sendtopacs.lock"
        )
        return state, temp, lock

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["password"] = ""
        out["password_hash"] = ""
        out["password_set"] = bool(self.password or self.password_hash)
        return out


def set_credentials(settings: Settings, username: str, password: str) -> None:
    """Store an argon2 hash of a strong password (refuses a weak one)."""
    from argon2 import PasswordHasher

    username = username.strip()
    if not username:
        raise ServiceError("the username is empty")
    check_password(password, username)
    cfg = ServiceConfig.from_json(settings.service)
    cfg.username = username
    cfg.password = ""
    cfg.password_hash = PasswordHasher().hash(password)
    settings.service = {**settings.service, **asdict(cfg.validate())}


def clear_credentials(settings: Settings) -> None:
    settings.service = {
        **settings.service,
        "username": "",
        "password": "",
        "password_hash": "",
    }


class InstanceLock:
    """One service per machine: an exclusive ``flock`` held while the service runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:
            fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = ""
            with contextlib.suppress(OSError):
                other = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise AlreadyRunning(
                f"another sendtopacs service is running ({other or 'lock held'}; lock file "
                f"{self.path}); stop it first"
            ) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


# -- the file list and jobs -----------------------------------------------------------------------
def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


@dataclass
class ListedFile:
    id: str
    name: str
    path: str
    source: str  #: upload | path | monitor
    dicom: bool
    size: int
    state: str = "new"  #: new | converting | sending | sent | failed | converted
    message: str = ""
    added: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobFile:
    file_id: str
    name: str
    state: str = "queued"  #: queued | converting | sending | sent | converted | failed
    message: str = ""
    objects: list[dict[str, str]] = field(default_factory=list)
    done: int = 0
    total: int = 0

    @property
    def progress(self) -> float:
        if self.state in ("sent", "converted", "failed"):
            return 1.0
        return self.done / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "progress": round(self.progress, 3)}


@dataclass
class Job:
    id: str
    kind: str  #: send | convert
    device: str
    files: list[JobFile]
    state: str = "queued"  #: queued | running | done | failed
    created: float = field(default_factory=time.time)
    finished: float = 0.0
    log: list[str] = field(default_factory=list)
    study_instance_uid: str = ""

    def note(self, line: str) -> None:
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        self.log.append(f"{stamp} {line}")

    def as_dict(self) -> dict[str, Any]:
        ok = sum(f.state in ("sent", "converted") for f in self.files)
        failed = sum(f.state == "failed" for f in self.files)
        return {
            "id": self.id,
            "kind": self.kind,
            "device": self.device,
            "state": self.state,
            "created": self.created,
            "finished": self.finished,
            "ok": ok,
            "failed": failed,
            "study_instance_uid": self.study_instance_uid,
            "files": [f.as_dict() for f in self.files],
            "log": list(self.log),
        }


class AuthThrottle:
    """Failed HTTP Basic logins per client address (brute-force protection of the API): after
    ``max_failures`` wrong credentials within ``window`` seconds the address is answered 429
    for ``lock`` seconds, doubled for each further lock up to ``max_lock``; a success resets.
    Requests without credentials do not count (a browser's first request has none)."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 300.0,
        lock: float = 30.0,
        max_lock: float = 900.0,
        clock: Any = time.monotonic,
    ) -> None:
        self.max_failures, self.window, self.lock, self.max_lock = (
            max_failures,
            window,
            lock,
            max_lock,
        )
        self.clock = clock
        self._guard = threading.Lock()
        #: address -> [failures in the window, window start, locked until, next lock length]
        self._state: dict[str, list[float]] = {}

    def locked_for(self, client: str) -> float:
        """Seconds the address must still wait (0: not locked)."""
        with self._guard:
            entry = self._state.get(client)
            return max(0.0, entry[2] - self.clock()) if entry else 0.0

    def failed(self, client: str) -> None:
        now = self.clock()
        with self._guard:
            if len(self._state) > 10_000:  # bounded: forget addresses that are not locked
                self._state = {k: v for k, v in self._state.items() if v[2] > now}
            entry = self._state.setdefault(client, [0, now, 0.0, self.lock])
            if now - entry[1] > self.window:
                entry[0], entry[1] = 0, now
            entry[0] += 1
            if entry[0] >= self.max_failures:
                entry[2] = now + entry[3]
                entry[3] = min(entry[3] * 2, self.max_lock)
                entry[0], entry[1] = 0, now

    def succeeded(self, client: str) -> None:
        with self._guard:
            self._state.pop(client, None)


class ServiceState:
    """Everything the API works on: settings, file list, jobs, monitors."""

    def __init__(self, settings_path: Path | None, monitors: bool = True) -> None:
        self.settings_path = settings_path
        self.settings = load(settings_path)
        self.config = ServiceConfig.from_json(self.settings.service)
        self.state_dir, self.temp_dir, self.lock_path = self.config.paths()
        self.lock = threading.RLock()
        self.files: dict[str, ListedFile] = {}
        self.jobs: dict[str, Job] = {}
        self.events: list[dict[str, Any]] = []
        self._auth_cache: set[str] = set()
        self.throttle = AuthThrottle()
        #: worklist entries handed out by /api/worklist/search: ref → (time, PatientInfo)
        self.worklist_refs: dict[str, tuple[float, Any]] = {}
        self.loopback = self.config.loopback
        self._queue: list[str] = []
        self._work = threading.Condition(self.lock)
        self._stop = False
        self._worker: threading.Thread | None = None
        self.run_monitors = monitors
        self.monitors: Any = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self.config.clean_unused_temp or self.config.clean_temp_on_exit:
            # left by a service that was killed: the new (empty) list uses none of it
            for sub in ("uploads", "jobs"):
                shutil.rmtree(self.temp_dir / sub, ignore_errors=True)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self._worker = threading.Thread(target=self._work_loop, name="jobs", daemon=True)
        self._worker.start()
        if self.run_monitors:
            self.start_monitors()

    def start_monitors(self) -> None:
        from pacsbox.sendtopacs.monitor import MonitorSet

        if self.settings.monitors:
            self.monitors = MonitorSet(
                self.settings, self.state_dir, on_list=self.add_monitored, on_event=self._event
            )
            self.monitors.start()

    def stop_monitors(self) -> None:
        if self.monitors is not None:
            self.monitors.stop()
            self.monitors = None

    def stop(self) -> None:
        with self._work:
            self._stop = True
            self._work.notify_all()
        if self._worker is not None:
            self._worker.join(30)
        self.stop_monitors()
        if self.config.clean_temp_on_exit:
            # only what the service put there (the folder may be a shared one)
            for sub in ("uploads", "jobs"):
                shutil.rmtree(self.temp_dir / sub, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.temp_dir.rmdir()  # when empty

    def _event(self, kind: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.events.append({"time": time.time(), "event": kind, **data})
            del self.events[:-500]

    # -- authentication ----------------------------------------------------------------------
    def check_basic(self, header: str) -> bool:
        cfg = self.config
        if not header.lower().startswith("basic "):
            return False
        digest = hashlib.sha256(header.encode()).hexdigest()
        if digest in self._auth_cache:
            return True
        try:
            user, _, password = base64.b64decode(header[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        ok_user = hmac.compare_digest(user.encode(), cfg.username.encode())
        if cfg.password_hash:
            from argon2 import PasswordHasher
            from argon2.exceptions import InvalidHashError, VerificationError

            try:
                ok_pw = PasswordHasher().verify(cfg.password_hash, password)
            except (VerificationError, InvalidHashError):
                ok_pw = False
        else:
            ok_pw = hmac.compare_digest(password.encode(), cfg.password.encode())
        if ok_user and ok_pw:
            self._auth_cache.add(digest)
            return True
        return False

    def ip_allowed(self, host: str | None) -> bool:
        if not host:
            return False
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        for entry in self.config.allowed_ips:
            net = ipaddress.ip_network(str(entry), strict=False)
            if addr.version == net.version and addr in net:
                return True
        return False

    # -- settings ----------------------------------------------------------------------------
    def replace_settings(self, data: dict[str, Any]) -> Settings:
        """Validate and write new settings; the service section keeps its secrets and the
        monitors restart with the new folders."""
        if not isinstance(data, dict):
            raise SettingsError("the settings must be a JSON object")
        data = dict(data)
        old_service = dict(self.settings.service)
        new_service = dict(data.get("service") or {})
        new_service.pop("password_set", None)
        for secret in ("username", "password", "password_hash"):
            new_service[secret] = old_service.get(secret, "")
        data["service"] = new_service
        path = self.settings.path
        tmp = Path(tempfile.mkdtemp(prefix="stp-settings-")) / "settings.json"
        try:
            tmp.write_text(json.dumps(data))
            candidate = load(tmp)
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
        candidate.path = path
        with self.lock:
            candidate.save(path)
            self.settings = candidate
            self.config = ServiceConfig.from_json(candidate.service)
        if self.run_monitors:
            self.stop_monitors()
            self.start_monitors()
        return candidate

    def save_settings(self) -> None:
        with self.lock:
            self.settings.save(self.settings.path)

    # -- file list ---------------------------------------------------------------------------
    def add_file(self, path: Path, name: str, source: str) -> ListedFile:
        st = path.stat()
        item = ListedFile(
            uuid.uuid4().hex[:12], name, str(path), source, _is_dicom(path), st.st_size
        )
        with self.lock:
            self.files[item.id] = item
        return item

    def add_monitored(self, path: Path) -> None:
        self.add_file(path, path.name, "monitor")

    def remove_file(self, file_id: str) -> ListedFile:
        with self.lock:
            item = self.files.pop(file_id)
        if item.source == "upload" and self.config.clean_unused_temp:
            shutil.rmtree(Path(item.path).parent, ignore_errors=True)
        return item

    # -- jobs --------------------------------------------------------------------------------
    def submit(self, job: Job, params: dict[str, Any]) -> Job:
        with self._work:
            self.jobs[job.id] = job
            job._params = params  # type: ignore[attr-defined]
            self._queue.append(job.id)
            self._work.notify_all()
            old = sorted(self.jobs.values(), key=lambda j: j.created)[:-200]
            for j in old:
                if j.state in ("done", "failed"):
                    self.jobs.pop(j.id, None)
        return job

    def _work_loop(self) -> None:
        while True:
            with self._work:
                while not self._queue and not self._stop:
                    self._work.wait(1.0)
                if self._stop:
                    return
                job = self.jobs[self._queue.pop(0)]
            try:
                job.state = "running"
                self._run_job(job, job._params)  # type: ignore[attr-defined]
                job.state = "failed" if any(f.state == "failed" for f in job.files) else "done"
            except Exception as exc:  # a job must never kill the worker
                log.exception("job %s", job.id)
                job.note(f"error: {exc}")
                for f in job.files:
                    if f.state not in ("sent", "converted", "failed"):
                        f.state, f.message = "failed", str(exc)
                job.state = "failed"
            job.finished = time.time()

    def _set_file(self, file_id: str, state: str, message: str = "") -> None:
        with self.lock:
            item = self.files.get(file_id)
            if item is not None:
                item.state, item.message = state, message

    def _run_job(self, job: Job, params: dict[str, Any]) -> None:
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        from pacsbox.sendtopacs.convert import Converter, ConvertError
        from pacsbox.sendtopacs.send import ItemResult, SendItem, send_items
        from pacsbox.sendtopacs.tagupdate import apply_updates, apply_worklist, parse_updates

        settings = self.settings
        replace_patient = params.get("replace_patient")
        updates = parse_updates(settings.tag_updates) if settings.tag_updates else []
        device: Device | None = params.get("device_obj")
        patient = params.get("patient")
        out_dir = self.temp_dir / "jobs" / job.id
        conv = None
        if patient is not None:
            conv = Converter(patient, settings.convert_options(device, **params["options"]))
            job.study_instance_uid = conv.study_uid
        items: list[SendItem] = []
        owner: dict[str, JobFile] = {}
        for jf in job.files:
            item = self.files.get(jf.file_id)
            path = Path(item.path) if item else None
            if path is None or not path.exists():
                jf.state, jf.message = "failed", "the file is no longer there"
                job.note(f"{jf.name}: {jf.message}")
                continue
            try:
                if item and item.dicom:
                    if job.kind == "convert":
                        jf.state, jf.message = "failed", "already DICOM (nothing to convert)"
                        continue
                    if updates or replace_patient is not None:
                        # the worklist entry replaces patient/study data, then the settings'
                        # tag update patterns apply (SPEC S3)
                        ds = dcmread(path)
                        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
                            raise ValueError("not a DICOM Part-10 file (no SOP Class/Instance UID)")
                        changes = []
                        if replace_patient is not None:
                            changes += apply_worklist(ds, replace_patient)
                        changes += apply_updates(ds, updates)
                        si = SendItem.from_dataset(f"{jf.file_id}:0", ds)
                        if changes:
                            job.note(f"{jf.name}: {len(changes)} attribute(s) updated")
                    else:
                        si = SendItem.from_file(path)
                    si.label = f"{jf.file_id}:0"
                    jf.objects = [{"sop_instance_uid": si.sop_instance_uid}]
                    items.append(si)
                    owner[si.label] = jf
                    jf.total = 1
                else:
                    if conv is None:
                        raise ConvertError("patient data are required for non-DICOM files")
                    jf.state = "converting"
                    self._set_file(jf.file_id, "converting")
                    made = conv.convert(path)
                    jf.total = len(made)
                    for n, obj in enumerate(made):
                        target = obj.save(out_dir)
                        jf.objects.append(
                            {
                                "sop_instance_uid": obj.sop_instance_uid,
                                "sop_class_uid": str(obj.dataset.SOPClassUID),
                                "note": obj.note,
                                "path": str(target),
                            }
                        )
                        if job.kind == "send":
                            si = SendItem.from_dataset(f"{jf.file_id}:{n}", obj.dataset)
                            items.append(si)
                            owner[si.label] = jf
                    job.note(f"{jf.name}: converted into {len(made)} object(s)")
                    if job.kind == "convert":
                        jf.state, jf.done = "converted", jf.total
                        self._set_file(jf.file_id, "converted")
            except (ConvertError, OSError, ValueError, InvalidDicomError, AttributeError) as exc:
                jf.state, jf.message = "failed", str(exc)
                self._set_file(jf.file_id, "failed", str(exc))
                job.note(f"{jf.name}: {exc}")
        if job.kind == "send" and items and device is not None:
            for jf in {id(j): j for j in owner.values()}.values():
                jf.state = "sending"
                self._set_file(jf.file_id, "sending")
            job.note(f"sending {len(items)} object(s) to {device.name}")

            def progress(res: ItemResult) -> None:
                jf = owner[res.label]
                jf.done += 1
                if not res.ok:
                    jf.state, jf.message = "failed", res.message
                    job.note(f"{jf.name}: {res.message}")
                elif jf.done >= jf.total and jf.state != "failed":
                    jf.state, jf.message = "sent", res.message
                    job.note(f"{jf.name}: sent ({res.message})")

            result = send_items(items, device, settings.ae_title, progress=progress)
            job.note(
                f"{len(result.sent)} object(s) sent, {len(result.failed)} failed, "
                f"{result.associations} association(s)"
            )
            for jf in {id(j): j for j in owner.values()}.values():
                self._set_file(jf.file_id, jf.state, jf.message)
                if jf.state == "sent" and self.config.remove_sent_from_list:
                    with contextlib.suppress(KeyError):
                        self.remove_file(jf.file_id)
            if self.config.clean_unused_temp:
                shutil.rmtree(out_dir, ignore_errors=True)
                for jf in job.files:
                    for obj in jf.objects:
                        obj.pop("path", None)


# -- the ASGI application ------------------------------------------------------------------------
def create_app(state: ServiceState) -> Any:
    """The FastAPI application of the service (API + web UI)."""
    from fastapi import FastAPI, HTTPException, Request, UploadFile
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    from pacsbox.sendtopacs.convert import ConvertError
    from pacsbox.sendtopacs.patient import PatientInfo, PatientInfoError

    app = FastAPI(title="sendtopacs service", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.stp = state

    def fail(status: int, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        client = request.client.host if request.client else None
        if not state.ip_allowed(client):
            return fail(403, f"address {client} is not in allowed_ips")
        host = (request.headers.get("host") or "").lower()
        host = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        if state.loopback and host not in ("127.0.0.1", "localhost", "::1", "testserver"):
            # bound to loopback: a browser reaching us under another name was lured there by
            # DNS rebinding
            return fail(403, f"Host {host!r} is not this service")
        origin = request.headers.get("origin")
        if origin and request.method not in ("GET", "HEAD", "OPTIONS"):
            expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if origin.rstrip("/") != expected:
                return fail(403, "cross-site request refused")
        path = request.url.path
        if state.config.secured and path != "/api/health":
            who = client or ""
            wait = state.throttle.locked_for(who)
            if wait > 0:
                resp = fail(429, "too many failed logins from this address; try again later")
                resp.headers["Retry-After"] = str(int(wait) + 1)
                return resp
            header = request.headers.get("authorization", "")
            if not state.check_basic(header):
                if header:
                    state.throttle.failed(who)
                resp = fail(401, "credentials required")
                resp.headers["WWW-Authenticate"] = 'Basic realm="sendtopacs", charset="UTF-8"'
                return resp
            state.throttle.succeeded(who)
        return await call_next(request)

    def body_dict(data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise HTTPException(400, "the body must be a JSON object")
        return data

    async def json_body(request: Request) -> dict[str, Any]:
        try:
            return body_dict(await request.json())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPException(400, f"the body is not JSON: {exc}") from exc

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail
        body = detail if isinstance(detail, dict) else {"error": str(detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    # -- status ----------------------------------------------------------------------------
    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/api/status")
    def status() -> dict[str, Any]:
        from pacsbox import __version__

        jobs = list(state.jobs.values())
        return {
            "version": __version__,
            "pid": os.getpid(),
            "ae_title": state.settings.ae_title,
            "files": len(state.files),
            "jobs": {
                s: sum(j.state == s for j in jobs) for s in ("queued", "running", "done", "failed")
            },
            "monitors": state.monitors.status() if state.monitors else [],
            "secured": state.config.secured,
        }

    @app.get("/api/monitor")
    def monitor_status(limit: int = 100) -> dict[str, Any]:
        if state.monitors is None:
            return {"monitors": [], "files": [], "events": state.events[-100:]}
        return {
            "monitors": state.monitors.status(),
            "files": state.monitors.journal.recent(max(1, min(limit, 1000))),
            "events": state.events[-100:],
        }

    # -- settings --------------------------------------------------------------------------
    def public_settings() -> dict[str, Any]:
        data = state.settings.to_json()
        data["service"] = ServiceConfig.from_json(state.settings.service).public()
        return data

    @app.get("/api/settings")
    def get_settings() -> dict[str, Any]:
        return public_settings()

    @app.put("/api/settings")
    async def put_settings(request: Request) -> Any:
        data = await json_body(request)
        try:
            state.replace_settings(data)
        except (SettingsError, ValueError) as exc:
            return fail(400, str(exc))
        return public_settings()

    # -- devices ---------------------------------------------------------------------------
    def device_from(data: dict[str, Any], name: str | None = None) -> Device:
        known = {f.name for f in fields(Device)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HTTPException(400, f"unknown device field(s): {', '.join(unknown)}")
        values = dict(data)
        if name is not None:
            values["name"] = name
        try:
            return Device(**values).validate()
        except (TypeError, ValueError) as exc:
            raise HTTPException(400, str(exc)) from exc

    @app.get("/api/devices")
    def devices() -> list[dict[str, Any]]:
        return [d.as_dict() for d in state.settings.devices]

    def change_devices(change: Any) -> Any:
        """Apply ``change`` to a fresh copy of the settings, validate and save it, then use
        it; on any error the service keeps its settings unchanged."""
        with state.lock:
            candidate = load(state.settings.path)
            try:
                result = change(candidate)
                candidate.save(state.settings.path)
            except SettingsError as exc:
                text = str(exc)
                code = (
                    409 if "exists" in text else 404 if text.startswith("unknown device") else 400
                )
                return fail(code, text)
            state.settings = candidate
            if state.monitors is not None:
                state.monitors.update_settings(candidate)
            return result

    @app.post("/api/devices", status_code=201)
    async def add_device(request: Request) -> Any:
        dev = device_from(await json_body(request))

        def change(s: Settings) -> Any:
            s.add_device(dev)
            return dev.as_dict()

        return change_devices(change)

    @app.put("/api/devices/{name}")
    async def edit_device(name: str, request: Request) -> Any:
        data = await json_body(request)

        def change(s: Settings) -> Any:
            old = s.device(name)
            new = device_from({**old.as_dict(), **data}, old.name)
            s.devices[s.devices.index(old)] = new
            if new.default:
                s.set_default(new.name)
            return new.as_dict()

        return change_devices(change)

    @app.delete("/api/devices/{name}")
    def delete_device(name: str) -> Any:
        return change_devices(lambda s: {"deleted": s.remove_device(name).name})

    @app.post("/api/devices/{name}/echo")
    def echo(name: str) -> Any:
        from pacsbox.sendtopacs.send import echo_device

        try:
            dev = state.settings.device(name)
        except SettingsError as exc:
            return fail(404, str(exc))
        ok, message = echo_device(dev, state.settings.ae_title)
        return {"device": dev.name, "ok": ok, "message": message}

    # -- worklist --------------------------------------------------------------------------
    def worklist_devices() -> list[Any]:
        from pacsbox.sendtopacs.worklist import WorklistDevice

        raw = getattr(state.settings, "worklist_devices", None)
        if raw is None:
            raw = state.settings.extra.get("worklist_devices", [])
        return [d if isinstance(d, WorklistDevice) else WorklistDevice.from_dict(d) for d in raw]

    @app.get("/api/worklist/devices")
    def get_worklist_devices() -> Any:
        try:
            return [d.as_dict() for d in worklist_devices()]
        except ValueError as exc:
            return fail(400, str(exc))

    @app.post("/api/worklist/search")
    async def worklist_search(request: Request) -> Any:
        from pacsbox.sendtopacs.worklist import (
            WorklistConfigError,
            WorklistError,
            WorklistQuery,
            search,
        )

        data = await json_body(request)
        name = str(data.get("device") or "")
        try:
            devs = worklist_devices()
        except ValueError as exc:
            return fail(400, str(exc))
        dev = next((d for d in devs if d.name.lower() == name.lower()), None)
        if dev is None and not name:
            dev = next((d for d in devs if d.default), devs[0] if len(devs) == 1 else None)
        if dev is None:
            return fail(404, f"unknown worklist device {name!r}")
        query = data.get("query") or {}
        known = {f.name for f in fields(WorklistQuery)}
        if not isinstance(query, dict) or set(query) - known:
            return fail(400, f"query: an object with {', '.join(sorted(known))}")
        try:
            found = search(
                dev, WorklistQuery(**{k: str(v) for k, v in query.items()}), state.settings.ae_title
            )
        except WorklistConfigError as exc:
            return fail(400, str(exc))
        except WorklistError as exc:
            return fail(502, str(exc))
        matches = []
        now = time.time()
        with state.lock:
            for ref, (stamp, _) in list(state.worklist_refs.items()):
                if now - stamp > WORKLIST_REF_SECONDS:
                    del state.worklist_refs[ref]
            for entry in found:
                ref = uuid.uuid4().hex
                state.worklist_refs[ref] = (now, entry.patient)
                matches.append({**entry.as_dict(), "ref": ref})
        return {"device": dev.name, "matches": matches}

    # -- file list -------------------------------------------------------------------------
    @app.get("/api/files")
    def list_files() -> list[dict[str, Any]]:
        return [f.as_dict() for f in sorted(state.files.values(), key=lambda f: f.added)]

    @app.post("/api/files", status_code=201)
    async def upload(request: Request) -> Any:
        limit = state.config.max_upload_mb << 20
        try:
            form = await request.form(max_files=10000, max_fields=100)
        except Exception as exc:
            return fail(400, f"expected multipart/form-data with files: {exc}")
        added = []
        try:
            for _, value in form.multi_items():
                if not isinstance(value, UploadFile) and not hasattr(value, "read"):
                    continue
                name = Path(value.filename or "upload").name or "upload"
                name = re.sub(r"[\x00-\x1f/\\]", "_", name)[:200] or "upload"
                folder = state.temp_dir / "uploads" / uuid.uuid4().hex
                folder.mkdir(parents=True, exist_ok=True)
                target = folder / name
                size = 0
                with open(target, "wb") as out:
                    while chunk := await value.read(1 << 20):
                        size += len(chunk)
                        if size > limit:
                            out.close()
                            shutil.rmtree(folder, ignore_errors=True)
                            return fail(413, f"{name}: larger than {state.config.max_upload_mb} MB")
                        out.write(chunk)
                added.append(state.add_file(target, name, "upload").as_dict())
        finally:
            await form.close()
        if not added:
            return fail(400, "no file in the upload (use the form field 'files')")
        return added

    @app.post("/api/files/paths", status_code=201)
    async def add_paths(request: Request) -> Any:
        data = await json_body(request)
        paths = data.get("paths")
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            return fail(400, "paths: a list of absolute file or folder paths")
        added, errors = [], []
        for raw in paths:
            p = Path(raw)
            if not p.is_absolute():
                errors.append(f"{raw}: not an absolute path")
                continue
            targets = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
            if not p.exists():
                errors.append(f"{raw}: no such file or folder")
                continue
            for t in targets:
                if any(part.startswith(".") for part in t.relative_to(p.parent).parts):
                    continue
                try:
                    added.append(state.add_file(t, t.name, "path").as_dict())
                except OSError as exc:
                    errors.append(f"{t}: {exc.strerror or exc}")
        if errors and not added:
            return fail(400, "; ".join(errors))
        return {"added": added, "errors": errors}

    @app.delete("/api/files/{file_id}")
    def delete_file(file_id: str) -> Any:
        try:
            item = state.remove_file(file_id)
        except KeyError:
            return fail(404, f"no file {file_id} in the list")
        return {"deleted": item.id}

    @app.delete("/api/files")
    def clear_files(state_filter: str = "") -> Any:
        removed = 0
        for f in list(state.files.values()):
            if not state_filter or f.state == state_filter:
                with contextlib.suppress(KeyError):
                    state.remove_file(f.id)
                    removed += 1
        return {"deleted": removed}

    # -- convert / send --------------------------------------------------------------------
    def start_job(kind: str, data: dict[str, Any]) -> Any:
        ids = data.get("files")
        if ids is None:
            ids = [f.id for f in state.files.values() if f.state not in ("sent",)]
        if not isinstance(ids, list) or not ids:
            return fail(400, "files: a non-empty list of file ids (or files in the list)")
        missing = [i for i in ids if i not in state.files]
        if missing:
            return fail(404, f"not in the file list: {', '.join(map(str, missing))}")
        chosen = [state.files[i] for i in ids]
        device = None
        if kind == "send":
            try:
                device = state.settings.device(data.get("device") or None)
            except SettingsError as exc:
                return fail(400, str(exc))
        patient = None
        worklist_only = [d.name for d in worklist_devices() if d.worklist_only]
        # DICOM inputs (SPEC S3): sent as they are, or mapped onto the chosen worklist entry
        # ("replace full worklist info", tagupdate.apply_worklist); the default follows the
        # settings' dicom_mode
        replace = data.get("replace_worklist_info")
        if replace is None:
            replace = state.settings.dicom_mode == "worklist"
        if not isinstance(replace, bool):
            return fail(400, "replace_worklist_info: true or false")
        replace = replace and any(f.dicom for f in chosen)
        if replace and not data.get("worklist_ref"):
            return fail(
                422,
                "replace worklist info: pick the worklist entry for the DICOM files "
                "(worklist search) and send its worklist_ref",
                errors=["worklist_ref: required to replace the DICOM files' worklist info"],
            )
        if data.get("worklist_ref") and (replace or any(not f.dicom for f in chosen)):
            # the patient as the worklist gave it ("Select" in the search window)
            with state.lock:
                picked = state.worklist_refs.get(str(data["worklist_ref"]))
            if picked is None:
                return fail(422, "unknown or expired worklist_ref: search the worklist again")
            patient = copy.deepcopy(picked[1])
            try:
                patient.validate()
            except PatientInfoError as exc:
                return fail(422, "the worklist entry has invalid values", errors=exc.errors)
        elif any(not f.dicom for f in chosen):
            if worklist_only:
                return fail(
                    422,
                    "worklist only (device " + ", ".join(worklist_only) + "): pick the patient "
                    "in a worklist search and send its worklist_ref",
                    errors=["patient: from the worklist only"],
                )
            raw = data.get("patient")
            if not isinstance(raw, dict):
                return fail(
                    422,
                    "patient data are required for non-DICOM files",
                    errors=["patient: required"],
                )
            known = {f.name for f in fields(PatientInfo)} - {"extra"}
            unknown = sorted(set(raw) - known - {"patient_name"})
            if unknown:
                return fail(400, f"unknown patient field(s): {', '.join(unknown)}")
            try:
                patient = PatientInfo(**{k: str(v) for k, v in raw.items() if k in known})
                if raw.get("patient_name"):
                    patient.set_name(str(raw["patient_name"]))
                patient.validate()
            except PatientInfoError as exc:
                return fail(422, "invalid patient data", errors=exc.errors)
        options = data.get("options") or {}
        allowed = {
            "modality",
            "sop_class",
            "video_format",
            "image_encoding",
            "tiff_split",
            "additional_value",
        }
        if not isinstance(options, dict) or set(options) - allowed:
            return fail(400, f"options: an object with {', '.join(sorted(allowed))}")
        try:
            state.settings.convert_options(device, **options)
        except (ConvertError, ValueError) as exc:
            return fail(400, str(exc))
        job = Job(
            uuid.uuid4().hex[:12],
            kind,
            device.name if device else "",
            [JobFile(f.id, f.name) for f in chosen],
        )
        job.note(f"{kind} {len(chosen)} file(s)" + (f" to {device.name}" if device else ""))
        for f in chosen:
            f.state, f.message = "queued", ""
        params = {
            "device_obj": device,
            "patient": patient if any(not f.dicom for f in chosen) else None,
            "options": options,
            "replace_patient": patient if replace else None,
        }
        state.submit(job, params)
        return JSONResponse(job.as_dict(), status_code=202)

    @app.post("/api/send")
    async def send(request: Request) -> Any:
        return start_job("send", await json_body(request))

    @app.post("/api/convert")
    async def convert(request: Request) -> Any:
        return start_job("convert", await json_body(request))

    @app.get("/api/jobs")
    def jobs() -> list[dict[str, Any]]:
        return [j.as_dict() for j in sorted(state.jobs.values(), key=lambda j: -j.created)]

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> Any:
        j = state.jobs.get(job_id)
        if j is None:
            return fail(404, f"no job {job_id}")
        return j.as_dict()

    @app.get("/api/jobs/{job_id}/objects/{uid}")
    def job_object(job_id: str, uid: str) -> Any:
        j = state.jobs.get(job_id)
        if j is None:
            return fail(404, f"no job {job_id}")
        for jf in j.files:
            for obj in jf.objects:
                if obj.get("sop_instance_uid") == uid and obj.get("path"):
                    p = Path(obj["path"])
                    if p.exists():
                        return FileResponse(
                            p, media_type="application/dicom", filename=f"{uid}.dcm"
                        )
        return fail(404, f"no object {uid} in job {job_id} (or its temp file was cleaned)")

    # -- web UI ----------------------------------------------------------------------------
    @app.get("/")
    def index() -> Any:
        return FileResponse(WEBUI / "index.html", media_type="text/html")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/ui", StaticFiles(directory=WEBUI), name="ui")

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    def unknown_api(rest: str) -> Any:
        return fail(404, f"no API route /api/{rest}")

    return app


def run(settings_path: Path | None, port: int | None = None, monitors: bool = True) -> int:
    """``sendtopacs service``: lock, start the monitors and serve until SIGTERM / Ctrl-C."""
    import signal
    import socket

    import uvicorn

    state = ServiceState(settings_path, monitors=monitors)
    if port is not None:
        state.config.port = port
    lock = InstanceLock(state.lock_path)
    lock.acquire()  # raises AlreadyRunning
    try:
        host, port_ = state.config.host, state.config.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port_))
        except OSError as exc:
            sock.close()
            raise ServiceError(f"cannot listen on {host}:{port_}: {exc.strerror or exc}") from exc
        state.start()
        app = create_app(state)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        print(
            f"sendtopacs service on http://{host}:{sock.getsockname()[1]}/ "
            f"(pid {os.getpid()}, {len(state.settings.monitors)} monitored folder(s))",
            flush=True,
        )
        # uvicorn re-raises the signal that stopped it once it has shut down; with a no-op
        # handler that returns here, so the cleanup below (temp folder, lock) always runs
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
        server.run(sockets=[sock])
        return 0
    finally:
        state.stop()
        lock.release()


# -- desktop integration (SPEC S7) ------------------------------------------------------------
def service_url(settings: Settings) -> str:
    cfg = ServiceConfig.from_json(settings.service)
    host = cfg.host if cfg.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{cfg.port}"


def add_to_running_service(
    paths: list[Path], url: str, auth: tuple[str, str] | None = None
) -> dict[str, Any]:
    """``POST /api/files/paths`` to the running service: the file manager's "Send to PACS"."""
    import httpx

    absolute = [str(Path(p).resolve()) for p in paths]
    try:
        r = httpx.post(f"{url}/api/files/paths", json={"paths": absolute}, auth=auth, timeout=60)
    except httpx.HTTPError as exc:
        raise ServiceError(f"the sendtopacs service at {url} does not answer ({exc})") from exc
    if r.status_code == 401:
        raise ServiceError("the service needs credentials (SENDTOPACS_API_USER / _PASSWORD)")
    try:
        body = r.json()
    except ValueError:
        body = {"error": r.text[:200]}
    if r.status_code >= 400:
        raise ServiceError(f"{url}: {r.status_code} {body.get('error', '')}")
    return body


def install_desktop(settings: Settings, data_home: Path | None = None) -> list[Path]:
    """Desktop entries (freedesktop.org): one that opens the web UI, one "Send to PACS"
    handler for images, PDFs, videos and DICOM files (the file managers' "Open with"), a
    Nautilus script and a Dolphin service menu — each adds the selected files to the list of
    the running service."""
    import shlex
    import shutil as _shutil
    import sys

    home = data_home or Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    exe = _shutil.which("sendtopacs") or str(Path(sys.executable).with_name("sendtopacs"))
    config = f" --config {shlex.quote(str(settings.path))}" if settings.path else ""
    add = f"{shlex.quote(exe)}{config} add"
    url = service_url(settings)
    mime = (
        "image/jpeg;image/png;image/bmp;image/gif;image/tiff;application/pdf;video/*;"
        "application/dicom;"
    )
    files = {
        home / "applications" / "sendtopacs.desktop": (
            "[Desktop Entry]\nType=Application\nName=sendtopacs\n"
            "Comment=Convert photos, PDFs and videos to DICOM and send them to a PACS\n"
            f"Exec=xdg-open {url}/\nTerminal=false\nCategories=Graphics;MedicalSoftware;\n"
        ),
        home / "applications" / "sendtopacs-send.desktop": (
            "[Desktop Entry]\nType=Application\nName=Send to PACS\n"
            "Comment=Add the files to the sendtopacs list\n"
            f"Exec={add} %F\nTerminal=false\nNoDisplay=true\nMimeType={mime}\n"
        ),
        home / "kio" / "servicemenus" / "sendtopacs.desktop": (
            "[Desktop Entry]\nType=Service\nMimeType=" + mime + "\nActions=sendtopacs\n"
            "X-KDE-ServiceTypes=KonqPopupMenu/Plugin\n\n[Desktop Action sendtopacs]\n"
            f"Name=Send to PACS\nExec={add} %F\n"
        ),
        home / "nautilus" / "scripts" / "Send to PACS": (
            "#!/bin/sh\n# sendtopacs: add the selected files to the list of the running service\n"
            "IFS='\n'\n"
            f"exec {add} $NAUTILUS_SCRIPT_SELECTED_FILE_PATHS\n"
        ),
    }
    written = []
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if path.parent.name == "scripts" or path.suffix == ".desktop":
            path.chmod(0o755)
        written.append(path)
    return written


def run_monitors(settings_path: Path | None) -> int:
    """``sendtopacs monitor``: only the folder monitors, in the foreground, until Ctrl-C."""
    import signal

    from pacsbox.sendtopacs.monitor import MonitorSet

    settings = load(settings_path)
    cfg = ServiceConfig.from_json(settings.service)
    state_dir, _, lock_path = cfg.paths()
    if not settings.monitors:
        raise ServiceError("no monitored folders in the settings (the 'monitors' list)")
    lock = InstanceLock(lock_path)
    lock.acquire()
    stop = threading.Event()

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind in ("done", "failed", "retry", "listed", "error"):
            detail = data.get("reason") or data.get("message") or ""
            print(f"{kind}: {data.get('path', data.get('folder'))} {detail}".rstrip(), flush=True)

    monitors = MonitorSet(settings, state_dir, on_event=on_event)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        monitors.start()
        print(f"monitoring {len(monitors.monitors)} folder(s) (pid {os.getpid()})", flush=True)
        stop.wait()
        return 0
    finally:
        monitors.stop()
        lock.release()

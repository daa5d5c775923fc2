"""sendtopacs settings (SPEC S4, S5): one JSON file that can be written beforehand (pre-seeded)
and is changed by ``sendtopacs devices ...``.

Location: ``--config PATH``, else ``$SENDTOPACS_CONFIG``, else
``$XDG_CONFIG_HOME/pacsbox/sendtopacs.json`` (``~/.config/pacsbox/sendtopacs.json``). A
missing file means the defaults. Unknown keys are kept when the file is rewritten, so a later
version (worklist devices, folder monitor, service) can add sections without breaking older
files. Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pacsbox.sendtopacs.convert import CHARACTER_SETS, ConvertOptions
from pacsbox.sendtopacs.sopclasses import VIDEO_FORMATS, SopClassEntry, default_table
from pacsbox.sendtopacs.worklist import WorklistConfigError, WorklistDevice


class SettingsError(ValueError):
    """The settings file or a value given for it is not valid."""


_AE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 AE VR: no backslash, no control


def check_ae_title(value: str, what: str = "AE title") -> str:
    value = value.strip()
    if not value or not _AE.match(value):
        raise SettingsError(f"{what} {value!r}: 1-16 printable characters, no backslash")
    return value


@dataclass
class Device:
    """A destination (Storage SCP) — SPEC S5."""

    name: str
    ae_title: str
    host: str
    port: int
    description: str = ""
    character_set: str = ""  #: for objects converted for this device ("" = the settings')
    decompress: bool = False  #: send Explicit VR Little Endian only
    files_per_association: int = 0  #: 0 = all files on one association
    default: bool = False
    timeout: float = 30.0  #: seconds, association/DIMSE/network

    def validate(self) -> Device:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.name):
            raise SettingsError(f"device name {self.name!r}: letters, digits, _ . - (≤ 64)")
        self.ae_title = check_ae_title(self.ae_title, f"device {self.name}: AE title")
        if not self.host or len(self.host) > 255 or any(c.isspace() for c in self.host):
            raise SettingsError(f"device {self.name}: host {self.host!r} is not valid")
        if not 1 <= int(self.port) <= 65535:
            raise SettingsError(f"device {self.name}: port {self.port} not in 1..65535")
        if self.character_set and self.character_set not in CHARACTER_SETS:
            raise SettingsError(
                f"device {self.name}: character set {self.character_set!r} is not one of "
                + ", ".join(CHARACTER_SETS)
            )
        if int(self.files_per_association) < 0:
            raise SettingsError(f"device {self.name}: files per association must be ≥ 0")
        if not 0 < float(self.timeout) <= 3600:
            raise SettingsError(f"device {self.name}: timeout must be in (0, 3600] seconds")
        self.port = int(self.port)
        self.files_per_association = int(self.files_per_association)
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Settings:
    ae_title: str = "SENDTOPACS"
    institution_name: str = ""
    station_name: str = ""
    modalities: list[str] = field(default_factory=lambda: ["OT", "XC", "ES", "DOC"])
    default_modality: str = "OT"
    character_set: str = ""
    sop_classes: list[SopClassEntry] = field(default_factory=default_table)
    image_encoding: str = "native"
    jpeg_quality: int = 90
    verify_jpeg: bool = True
    tiff_split: bool = False
    video_format: str = "auto"
    video_fallback: str = "h264-hp41"
    additional_info_tag: str = ""
    additional_info_values: list[str] = field(default_factory=list)
    additional_info_default: str = ""
    devices: list[Device] = field(default_factory=list)
    #: watched folders (SPEC S6), each a :class:`pacsbox.sendtopacs.monitor.MonitorConfig`
    monitors: list[dict[str, Any]] = field(default_factory=list)
    #: background service (SPEC S7), see :class:`pacsbox.sendtopacs.service.ServiceConfig`
    service: dict[str, Any] = field(default_factory=dict)
    #: worklist sources (SPEC S2), see :class:`pacsbox.sendtopacs.worklist.WorklistDevice`
    worklist_devices: list[WorklistDevice] = field(default_factory=list)
    #: parse non-DICOM file names into worklist searches (sendtopacs/naming.py; "" = off)
    filename_pattern: str = ""
    #: DICOM inputs: "as-is" or "worklist" (replace full worklist info, sendtopacs/tagupdate.py)
    dicom_mode: str = "as-is"
    #: tag update patterns for DICOM inputs: {"tag", "value", "if_empty", "create"} each
    tag_updates: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  #: sections this version ignores
    path: Path | None = None

    # -- devices ---------------------------------------------------------------------------
    def device(self, name: str | None = None) -> Device:
        """A device by name (case-insensitive), or the default device when ``name`` is None."""
        if name is None:
            for dev in self.devices:
                if dev.default:
                    return dev
            if len(self.devices) == 1:
                return self.devices[0]
            raise SettingsError("no default device; name one (sendtopacs devices list)")
        for dev in self.devices:
            if dev.name.lower() == name.lower():
                return dev
        known = ", ".join(d.name for d in self.devices) or "none configured"
        raise SettingsError(f"unknown device {name!r} (devices: {known})")

    def add_device(self, device: Device) -> None:
        device.validate()
        if any(d.name.lower() == device.name.lower() for d in self.devices):
            raise SettingsError(f"device {device.name!r} exists already (use devices edit)")
        if device.default or not self.devices:
            for d in self.devices:
                d.default = False
            device.default = True
        self.devices.append(device)

    def remove_device(self, name: str) -> Device:
        dev = self.device(name)
        self.devices.remove(dev)
        if dev.default and self.devices:
            self.devices[0].default = True
        return dev

    def set_default(self, name: str) -> None:
        dev = self.device(name)
        for d in self.devices:
            d.default = d is dev

    # -- worklist devices ------------------------------------------------------------------
    def worklist_device(self, name: str | None = None) -> WorklistDevice:
        """A worklist device by name (case-insensitive), or the default one when None."""
        if name is None:
            for wl in self.worklist_devices:
                if wl.default:
                    return wl
            if len(self.worklist_devices) == 1:
                return self.worklist_devices[0]
            raise SettingsError("no default worklist device; name one (worklist-devices list)")
        for wl in self.worklist_devices:
            if wl.name.lower() == name.lower():
                return wl
        known = ", ".join(w.name for w in self.worklist_devices) or "none configured"
        raise SettingsError(f"unknown worklist device {name!r} (worklist devices: {known})")

    def add_worklist_device(self, device: WorklistDevice) -> None:
        try:
            device.validate()
        except WorklistConfigError as exc:
            raise SettingsError(str(exc)) from exc
        if any(w.name.lower() == device.name.lower() for w in self.worklist_devices):
            raise SettingsError(f"worklist device {device.name!r} exists already")
        if device.default or not self.worklist_devices:
            for w in self.worklist_devices:
                w.default = False
            device.default = True
        self.worklist_devices.append(device)

    def remove_worklist_device(self, name: str) -> WorklistDevice:
        wl = self.worklist_device(name)
        self.worklist_devices.remove(wl)
        if wl.default and self.worklist_devices:
            self.worklist_devices[0].default = True
        return wl

    # -- conversion ------------------------------------------------------------------------
    def convert_options(self, device: Device | None = None, **overrides: Any) -> ConvertOptions:
        """The converter options these settings give (a device's character set wins)."""
        opts = ConvertOptions(
            table=list(self.sop_classes),
            default_modality=self.default_modality,
            institution_name=self.institution_name,
            station_name=self.station_name,
            character_set=(device.character_set if device and device.character_set else "")
            or self.character_set,
            additional_tag=self.additional_info_tag,
            additional_value=self.additional_info_default,
            image_encoding=self.image_encoding,
            jpeg_quality=self.jpeg_quality,
            verify_jpeg=self.verify_jpeg,
            tiff_split=self.tiff_split,
            video_format=self.video_format,
            video_fallback=self.video_fallback,
        )
        for key, value in overrides.items():
            if value is not None and value != "":
                setattr(opts, key, value)
        return opts.validate()

    def validate(self) -> Settings:
        self.ae_title = check_ae_title(self.ae_title, "own AE title")
        for dev in self.devices:
            dev.validate()
        names = [d.name.lower() for d in self.devices]
        if len(set(names)) != len(names):
            raise SettingsError("two devices have the same name")
        if sum(d.default for d in self.devices) > 1:
            raise SettingsError("more than one default device")
        if sum(e.default for e in self.sop_classes) > 1:
            raise SettingsError("SOP class table: more than one default row")
        for entry in self.sop_classes:
            if entry.default and "*" not in entry.extensions:
                raise SettingsError(
                    f"SOP class table: the default row ({entry.uid}) must be for all files (*)"
                )
        if self.video_format != "auto" and self.video_format not in VIDEO_FORMATS:
            raise SettingsError(
                f"video_format {self.video_format!r}: auto or one of {', '.join(VIDEO_FORMATS)}"
            )
        if self.video_fallback not in VIDEO_FORMATS:
            raise SettingsError(
                f"video_fallback {self.video_fallback!r}: one of {', '.join(VIDEO_FORMATS)}"
            )
        if self.default_modality not in self.modalities:
            self.modalities.append(self.default_modality)
        if (
            self.additional_info_default
            and self.additional_info_values
            and (self.additional_info_default not in self.additional_info_values)
        ):
            raise SettingsError("additional_info_default is not one of additional_info_values")
        self.convert_options()  # checks modality, charset, tag, encoding
        self._validate_worklist()
        if self.monitors or self.service:
            from pacsbox.sendtopacs.monitor import parse_monitors
            from pacsbox.sendtopacs.service import ServiceConfig

            if not isinstance(self.monitors, list):
                raise SettingsError("monitors must be a list of folders")
            try:
                parse_monitors(self.monitors, self)
                ServiceConfig.from_json(self.service)
            except ValueError as exc:
                raise SettingsError(str(exc)) from exc
        return self

    def _validate_worklist(self) -> None:
        from pacsbox.sendtopacs.naming import FilenamePattern, PatternError
        from pacsbox.sendtopacs.tagupdate import TagUpdateError, parse_updates

        try:
            for wl in self.worklist_devices:
                wl.validate()
            if self.filename_pattern:
                FilenamePattern(self.filename_pattern)
            if not isinstance(self.tag_updates, list):
                raise SettingsError("tag_updates must be a list")
            parse_updates(self.tag_updates)
        except (WorklistConfigError, PatternError, TagUpdateError) as exc:
            raise SettingsError(str(exc)) from exc
        names = [w.name.lower() for w in self.worklist_devices]
        if len(set(names)) != len(names):
            raise SettingsError("two worklist devices have the same name")
        if sum(w.default for w in self.worklist_devices) > 1:
            raise SettingsError("more than one default worklist device")
        if self.dicom_mode not in ("as-is", "worklist"):
            raise SettingsError(f"dicom_mode {self.dicom_mode!r}: as-is or worklist")

    # -- file ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name in ("extra", "path"):
                continue
            value = getattr(self, f.name)
            if f.name == "sop_classes":
                value = [e.to_json() for e in value]
            elif f.name in ("devices", "worklist_devices"):
                value = [d.as_dict() for d in value]
            out[f.name] = value
        return out

    def save(self, path: Path | None = None) -> Path:
        target = Path(path or self.path or default_path())
        self.validate()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, target)
        self.path = target
        return target


def default_path() -> Path:
    env = os.environ.get("SENDTOPACS_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "pacsbox" / "sendtopacs.json"


def load(path: Path | None = None) -> Settings:
    """Read the settings file (missing → defaults); raise SettingsError with the reason."""
    target = Path(path) if path else default_path()
    if not target.exists():
        settings = Settings()
        settings.path = target
        return settings
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SettingsError(f"{target}: cannot read settings ({exc})") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"{target}: the settings must be a JSON object")
    known = {f.name for f in fields(Settings)} - {"extra", "path"}
    kwargs: dict[str, Any] = {}
    try:
        for key, value in data.items():
            if key not in known:
                continue
            if key == "sop_classes":
                value = [SopClassEntry.from_json(v) for v in value]
            elif key == "devices":
                dev_fields = {f.name for f in fields(Device)}
                value = [Device(**{k: v for k, v in d.items() if k in dev_fields}) for d in value]
            elif key == "worklist_devices":
                value = [WorklistDevice.from_dict(d) for d in value]
            kwargs[key] = value
        settings = Settings(**kwargs)
    except (TypeError, ValueError, AttributeError) as exc:
        raise SettingsError(f"{target}: {exc}") from exc
    settings.extra = {k: v for k, v in data.items() if k not in known}
    settings.path = target
    try:
        return settings.validate()
    except ValueError as exc:
        raise SettingsError(f"{target}: {exc}") from exc

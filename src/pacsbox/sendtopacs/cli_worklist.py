"""The worklist parts of the ``sendtopacs`` command line (SPEC S2, S3, S7):

* ``sendtopacs worklist [DEVICE] [--patient-id … --patient-name … --modality … --date …
  --accession … --station-ae … --json]`` — search a worklist device and list the matches;
* ``sendtopacs worklist-devices list|add|edit|remove|default|echo`` — the worklist devices in
  the settings file;
* :class:`Objects` — what ``send`` / ``convert`` make of each file: patient data from the
  command line, or from one worklist entry (``--worklist DEVICE --search k=v …``), or per file
  from its name (``--from-filename PATTERN``, SPEC S2 auto-mapping: a file whose search does
  not give exactly one entry is not sent and its candidates are listed); DICOM inputs sent as
  they are, or with "replace full worklist info" (``--replace-worklist-info``), then the tag
  update patterns (``--tag-update 'Keyword=template' [--if-empty] [--create]``, plus the
  settings' ``tag_updates`` for DICOM inputs).

"Worklist only" (a worklist device with ``worklist_only``): patient options on the command
line are refused; the patient data of non-DICOM files must come from a worklist.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pacsbox.sendtopacs.convert import Converted, Converter
from pacsbox.sendtopacs.patient import PatientInfo
from pacsbox.sendtopacs.settings import Settings, SettingsError
from pacsbox.sendtopacs.tagupdate import (
    TagUpdate,
    TagUpdateError,
    apply_updates,
    parse_updates,
    prepare,
)
from pacsbox.sendtopacs.worklist import (
    WorklistConfigError,
    WorklistDevice,
    WorklistEntry,
    WorklistError,
    WorklistQuery,
    echo,
    search,
)

console = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)
EXIT_FAILED = 1
EXIT_USAGE = 2

worklist_devices_app = typer.Typer(
    help="Worklist devices (MWL, Q/R C-FIND, HTTP JSON).", no_args_is_help=True
)

#: ``--search`` keys (and their aliases) → WorklistQuery fields
SEARCH_KEYS = {
    "patient_id": "patient_id",
    "patientid": "patient_id",
    "pid": "patient_id",
    "patient_name": "patient_name",
    "patientname": "patient_name",
    "name": "patient_name",
    "accession": "accession_number",
    "accession_number": "accession_number",
    "accessionnumber": "accession_number",
    "modality": "modality",
    "station_ae": "station_ae",
    "station": "station_ae",
    "date": "date",
    "study_uid": "study_instance_uid",
    "study_instance_uid": "study_instance_uid",
    "studyinstanceuid": "study_instance_uid",
}


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"[red]{message}[/red]")
    return typer.Exit(code)


def _settings() -> Settings:
    from pacsbox.sendtopacs.cli import _settings as load_settings

    return load_settings()


def _save(settings: Settings) -> None:
    from pacsbox.sendtopacs.cli import _save as save_settings

    save_settings(settings)


def parse_search(items: list[str]) -> WorklistQuery:
    """``k=v`` items → a query (keys: see SEARCH_KEYS)."""
    q = WorklistQuery()
    for item in items:
        key, sep, value = item.partition("=")
        field = SEARCH_KEYS.get(key.strip().lower())
        if not sep or field is None:
            raise _fail(
                f"--search {item!r}: write KEY=VALUE with KEY one of "
                "patient_id, patient_name, accession, modality, station_ae, date, study_uid"
            )
        setattr(q, field, value.strip())
    return q


def cli_updates(texts: list[str], if_empty: bool, create: bool) -> list[TagUpdate]:
    try:
        return [TagUpdate.parse(t, if_empty=if_empty, create=create) for t in texts]
    except TagUpdateError as exc:
        raise _fail(f"--tag-update: {exc}") from exc


def candidates_text(candidates: list[WorklistEntry]) -> str:
    if not candidates:
        return ""
    lines = [f"    {i}. {c.label()}" for i, c in enumerate(candidates[:20], 1)]
    if len(candidates) > 20:
        lines.append(f"    … {len(candidates) - 20} more")
    return "\n" + "\n".join(lines)


def _usable_modality(text: str) -> str:
    return text if re.fullmatch(r"[A-Z0-9_]{1,16}", text or "") else ""


class Objects:
    """The objects a ``send`` / ``convert`` run makes of each file (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        *,
        make_patient: Callable[[], PatientInfo],
        make_converter: Callable[[PatientInfo, str], Converter],
        manual: bool,
        worklist: str | None,
        searches: list[str],
        from_filename: str | None,
        pick: int | None = None,
        replace: bool,
        tag_updates: list[str],
        if_empty: bool,
        create: bool,
        calling: str,
    ) -> None:
        self.settings = settings
        self.make_patient = make_patient
        self.make_converter = make_converter
        self.calling = calling
        self.replace = replace or settings.dicom_mode == "worklist"
        self.cli_updates = cli_updates(tag_updates, if_empty, create)
        try:
            self.dicom_updates = parse_updates(settings.tag_updates) + self.cli_updates
        except TagUpdateError as exc:
            raise _fail(f"settings tag_updates: {exc}") from exc
        self.device: WorklistDevice | None = None
        self.pattern = from_filename or ""
        self.pick = pick
        self.query: WorklistQuery | None = None
        self.entries: dict[Path, WorklistEntry] = {}
        self.problems: dict[Path, str] = {}
        self._manual: Converter | None = None
        self._by_entry: dict[int, Converter] = {}
        self.manual = manual
        self.only = [w.name for w in settings.worklist_devices if w.worklist_only]
        uses_worklist = bool(worklist or searches or from_filename)
        if manual and self.only:
            raise _fail(
                f"worklist only ({', '.join(self.only)}): patient data cannot be typed in; "
                "use --worklist DEVICE --search KEY=VALUE or --from-filename PATTERN"
            )
        if not uses_worklist and not self.replace:
            return
        if manual and uses_worklist:
            raise _fail(
                "patient options and --worklist/--search/--from-filename exclude each other"
            )
        try:
            self.device = settings.worklist_device(worklist)
            self.device.validate()
        except (SettingsError, WorklistConfigError) as exc:
            raise _fail(str(exc)) from exc
        if pick is not None and (not searches or pick < 1):
            raise _fail("--pick N (N ≥ 1) goes with --search")
        if searches:
            self.query = parse_search(searches)
        elif not self.pattern:
            self.pattern = settings.filename_pattern
            if not self.pattern and not self.replace:
                raise _fail(
                    "--worklist needs --search KEY=VALUE or --from-filename PATTERN "
                    "(or filename_pattern in the settings)"
                )

    def plan(self, files: list[Path], non_dicom: set[Path]) -> None:
        """Search the worklist for every file that needs an entry (once per distinct search)."""
        if self.device is None:
            return
        wanted = [
            p
            for p in files
            if (p in non_dicom and not self.manual) or (p not in non_dicom and self.replace)
        ]
        if not wanted:
            return
        if self.query is not None:
            try:
                found = search(self.device, self.query, self.calling)
            except (WorklistError, WorklistConfigError) as exc:
                for p in wanted:
                    self.problems[p] = str(exc)
                return
            usable = [e for e in found if not e.problem]
            chosen: WorklistEntry | None = None
            if self.pick is not None:
                if self.pick <= len(found) and not found[self.pick - 1].problem:
                    chosen = found[self.pick - 1]
            elif len(found) == 1 and usable:
                chosen = usable[0]
            if chosen is not None:
                for p in wanted:
                    self.entries[p] = chosen
                return
            if not found:
                why = "no worklist entry matches the search"
            elif self.pick is not None:
                why = (
                    f"--pick {self.pick}: only {len(found)} match(es)"
                    if self.pick > len(found)
                    else f"match {self.pick} has invalid values: {found[self.pick - 1].problem}"
                )
            elif len(found) == 1:
                why = f"the only match has invalid values: {found[0].problem}"
            else:
                why = f"{len(found)} worklist entries match the search; narrow it or --pick N"
            for p in wanted:
                self.problems[p] = why + candidates_text(found)
            return
        from pacsbox.sendtopacs.naming import PatternError, auto_map

        try:
            mapped = auto_map(wanted, self.device, self.pattern or None, calling=self.calling)
        except PatternError as exc:
            raise _fail(f"--from-filename: {exc}") from exc
        for m in mapped:
            if m.status == "mapped" and m.entry is not None:
                self.entries[m.path] = m.entry
            else:
                self.problems[m.path] = m.message + candidates_text(m.candidates)

    def _converter(self, entry: WorklistEntry | None) -> Converter:
        if entry is None:
            if self.only:
                raise ValueError(
                    f"worklist only ({', '.join(self.only)}): use --worklist with --search "
                    "or --from-filename"
                )
            if self._manual is None:
                self._manual = self.make_converter(self.make_patient(), "")
            return self._manual
        key = id(entry)
        if key not in self._by_entry:
            patient = dataclasses.replace(entry.patient, extra=dict(entry.patient.extra))
            self._by_entry[key] = self.make_converter(patient, _usable_modality(entry.modality))
        return self._by_entry[key]

    def make(self, path: Path, is_dicom: bool) -> list[Converted] | None:
        """The objects for ``path``; None = send the DICOM file as it is. A file that could
        not be mapped raises ValueError with the reason (and the candidates)."""
        if path in self.problems:
            raise ValueError(f"needs a choice: {self.problems[path]}")
        entry = self.entries.get(path)
        if is_dicom:
            if not (self.replace and entry) and not self.dicom_updates:
                return None
            from pydicom import dcmread

            ds = dcmread(path)
            prepare(
                ds,
                mode="worklist" if self.replace and entry else "as-is",
                entry=entry,
                updates=self.dicom_updates,
            )
            note = "worklist info replaced" if self.replace and entry else "tags updated"
            return [Converted(path, ds, note)]
        items = self._converter(entry).convert(path)
        if self.cli_updates:
            for item in items:
                apply_updates(item.dataset, self.cli_updates)
        return items


# -- sendtopacs worklist ------------------------------------------------------------------------
def worklist_cmd(
    device_name: Annotated[str | None, typer.Argument(metavar="[DEVICE]")] = None,
    patient_id: Annotated[str, typer.Option("--patient-id", help="Wildcards * ?")] = "",
    patient_name: Annotated[str, typer.Option("--patient-name", help="e.g. 'DOE^J*'")] = "",
    modality: Annotated[str, typer.Option("--modality", help="MWL: SPS modality")] = "",
    date: Annotated[
        str, typer.Option("--date", help="today, YYYYMMDD, YYYYMMDD-YYYYMMDD; * = any")
    ] = "",
    accession: Annotated[str, typer.Option("--accession")] = "",
    station_ae: Annotated[str, typer.Option("--station-ae", help="MWL: scheduled AE")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output")] = False,
) -> None:
    """Search a worklist device (the default one when DEVICE is left out)."""
    settings = _settings()
    try:
        device = settings.worklist_device(device_name)
    except SettingsError as exc:
        raise _fail(str(exc)) from exc
    query = WorklistQuery(
        patient_id=patient_id,
        patient_name=patient_name,
        accession_number=accession,
        modality=modality.upper(),
        station_ae=station_ae,
        date=date,
    )
    try:
        found = search(device, query, settings.ae_title)
    except WorklistConfigError as exc:
        raise _fail(str(exc)) from exc
    except WorklistError as exc:
        raise _fail(str(exc), EXIT_FAILED) from exc
    if as_json:
        print(json.dumps([e.as_dict() for e in found], indent=1, ensure_ascii=False))
        return
    for i, e in enumerate(found, 1):
        console.print(f"{i}. {e.label()}" + (f"  [red]({e.problem})[/red]" if e.problem else ""))
    console.print(f"{len(found)} match(es) in {device.name}")


# -- sendtopacs worklist-devices ----------------------------------------------------------------
def _mapping(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, path = item.partition("=")
        if not sep:
            raise _fail(f"--map {item!r}: write FIELD=json.path")
        out[key.strip()] = path.strip()
    return out


@worklist_devices_app.command("list")
def wl_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the worklist devices."""
    settings = _settings()
    if as_json:
        print(json.dumps([w.as_dict() for w in settings.worklist_devices], indent=1))
        return
    if not settings.worklist_devices:
        console.print("no worklist devices (sendtopacs worklist-devices add NAME ...)")
    for w in settings.worklist_devices:
        where = w.url if w.kind == "http" else f"{w.ae_title}@{w.host}:{w.port}"
        model = f" {w.root_model}/{w.level}" if w.kind == "qr" else ""
        flags = [f for f, on in (("default", w.default), ("worklist-only", w.worklist_only)) if on]
        console.print(f"{w.name}: {w.kind}{model} {where} {' '.join(flags)}".rstrip())


def _wl_fields(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


KindOpt = Annotated[str | None, typer.Option("--kind", help="mwl, qr or http")]
AecOpt = Annotated[str | None, typer.Option("--aec", help="The device's AE title")]
HostOpt = Annotated[str | None, typer.Option("--host")]
PortOpt = Annotated[int | None, typer.Option("--port")]
RootOpt = Annotated[str | None, typer.Option("--root", help="qr: PATIENT, STUDY or PATIENT_STUDY")]
LevelOpt = Annotated[str | None, typer.Option("--level", help="qr: PATIENT or STUDY")]
UrlOpt = Annotated[str | None, typer.Option("--url", help="http: URL template")]
AuthOpt = Annotated[str | None, typer.Option("--auth-header", help="'Name: value'")]
ResultsOpt = Annotated[str | None, typer.Option("--results-path", help="http: dotted path")]
MapOpt = Annotated[list[str] | None, typer.Option("--map", help="http: FIELD=json.path (repeat)")]
ModOpt = Annotated[str | None, typer.Option("--modality", help="default modality")]
StationOpt = Annotated[str | None, typer.Option("--station-ae", help="default station AE")]
DateOpt = Annotated[str | None, typer.Option("--date", help="default: today / range / empty")]
OnlyOpt = Annotated[bool | None, typer.Option("--worklist-only/--no-worklist-only")]
TimeoutOpt = Annotated[float | None, typer.Option("--timeout", help="seconds")]
CharsetOpt = Annotated[str | None, typer.Option("--charset")]
DescOpt = Annotated[str | None, typer.Option("--description")]


@worklist_devices_app.command("add")
def wl_add(
    name: str,
    kind: KindOpt = "mwl",
    aec: AecOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    root: RootOpt = None,
    level: LevelOpt = None,
    url: UrlOpt = None,
    auth_header: AuthOpt = None,
    results_path: ResultsOpt = None,
    mapping: MapOpt = None,
    modality: ModOpt = None,
    station_ae: StationOpt = None,
    date: DateOpt = None,
    worklist_only: OnlyOpt = None,
    timeout: TimeoutOpt = None,
    charset: CharsetOpt = None,
    description: DescOpt = None,
    default: Annotated[bool, typer.Option("--default")] = False,
) -> None:
    """Add a worklist device."""
    settings = _settings()
    values = _wl_fields(
        kind=kind,
        ae_title=aec,
        host=host,
        port=port,
        root_model=root,
        level=level,
        url=url,
        auth_header=auth_header,
        results_path=results_path,
        mapping=_mapping(mapping) if mapping else None,
        modality=modality.upper() if modality else None,
        station_ae=station_ae,
        date=date,
        worklist_only=worklist_only,
        timeout=timeout,
        character_set=charset,
        description=description,
        default=default,
    )
    try:
        settings.add_worklist_device(WorklistDevice(name, **values))
    except (SettingsError, WorklistConfigError, TypeError) as exc:
        raise _fail(str(exc)) from exc
    _save(settings)


@worklist_devices_app.command("edit")
def wl_edit(
    name: str,
    kind: KindOpt = None,
    aec: AecOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    root: RootOpt = None,
    level: LevelOpt = None,
    url: UrlOpt = None,
    auth_header: AuthOpt = None,
    results_path: ResultsOpt = None,
    mapping: MapOpt = None,
    modality: ModOpt = None,
    station_ae: StationOpt = None,
    date: DateOpt = None,
    worklist_only: OnlyOpt = None,
    timeout: TimeoutOpt = None,
    charset: CharsetOpt = None,
    description: DescOpt = None,
) -> None:
    """Change a worklist device's values (only those given)."""
    settings = _settings()
    values = _wl_fields(
        kind=kind,
        ae_title=aec,
        host=host,
        port=port,
        root_model=root,
        level=level,
        url=url,
        auth_header=auth_header,
        results_path=results_path,
        mapping=_mapping(mapping) if mapping else None,
        modality=modality.upper() if modality is not None else None,
        station_ae=station_ae,
        date=date,
        worklist_only=worklist_only,
        timeout=timeout,
        character_set=charset,
        description=description,
    )
    try:
        wl = settings.worklist_device(name)
        for key, value in values.items():
            setattr(wl, key, value)
        wl.validate()
    except (SettingsError, WorklistConfigError) as exc:
        raise _fail(str(exc)) from exc
    _save(settings)


@worklist_devices_app.command("remove")
def wl_remove(name: str) -> None:
    """Remove a worklist device."""
    settings = _settings()
    try:
        settings.remove_worklist_device(name)
    except SettingsError as exc:
        raise _fail(str(exc)) from exc
    _save(settings)


@worklist_devices_app.command("default")
def wl_default(name: str) -> None:
    """Make a worklist device the default one."""
    settings = _settings()
    try:
        wl = settings.worklist_device(name)
    except SettingsError as exc:
        raise _fail(str(exc)) from exc
    for w in settings.worklist_devices:
        w.default = w is wl
    _save(settings)


@worklist_devices_app.command("echo")
def wl_echo(
    name: Annotated[str | None, typer.Argument(metavar="[DEVICE]")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """C-ECHO a DICOM worklist device (an HTTP one: GET with empty search values)."""
    settings = _settings()
    try:
        wl = settings.worklist_device(name)
        ok, message = echo(wl, settings.ae_title)
    except (SettingsError, WorklistConfigError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        print(json.dumps({"device": wl.name, "ok": ok, "message": message}))
    else:
        console.print(message if ok else f"[red]{message}[/red]")
    raise typer.Exit(0 if ok else EXIT_FAILED)

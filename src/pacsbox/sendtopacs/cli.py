"""The ``sendtopacs`` command line (SPEC S7): ``convert`` non-DICOM files into DICOM,
``send`` files to a device (non-DICOM ones converted on the fly, DICOM ones as they are),
``echo`` a device, and manage ``devices`` in the settings file. Worklist search, worklist
devices, patient data from a worklist / the file name and tag updates: ``cli_worklist.py``.

Exit codes: 0 everything worked; 1 at least one file could not be converted or sent (each
one's reason is printed); 2 invalid arguments, patient data or settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pacsbox.sendtopacs.cli_worklist import Objects, worklist_cmd, worklist_devices_app
from pacsbox.sendtopacs.convert import Converter
from pacsbox.sendtopacs.patient import PatientInfo, PatientInfoError
from pacsbox.sendtopacs.settings import Device, Settings, SettingsError, load

app = typer.Typer(
    help="sendtopacs — convert photos, PDFs and videos to DICOM and send them to any PACS.",
    no_args_is_help=True,
    add_completion=False,
)
devices_app = typer.Typer(help="Destination devices (Storage SCPs).", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
console = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

EXIT_FAILED = 1
EXIT_USAGE = 2

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Settings file (default: ~/.config/pacsbox/sendtopacs.json)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


class _State:
    config: Path | None = None


state = _State()


@app.callback()
def _main(config: ConfigOpt = None) -> None:
    state.config = config


def _settings() -> Settings:
    try:
        return load(state.config)
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            for dirpath, dirs, names in os.walk(path):
                dirs.sort()
                out.extend(Path(dirpath) / n for n in sorted(names) if not n.startswith("."))
        else:
            out.append(path)
    return out


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


# -- patient / conversion options shared by convert and send ----------------------------------
PatientId = Annotated[str, typer.Option("--patient-id", help="Patient ID (0010,0020)")]
PatientName = Annotated[
    str, typer.Option("--patient-name", help="LAST^FIRST^MIDDLE^PREFIX^SUFFIX (0010,0010)")
]
BirthDate = Annotated[str, typer.Option("--birth-date", help="YYYYMMDD or YYYY-MM-DD")]
Sex = Annotated[str, typer.Option("--sex", help="M, F or O")]
Accession = Annotated[str, typer.Option("--accession", help="Accession Number (0008,0050)")]
StudyDesc = Annotated[str, typer.Option("--study-description")]
StudyDate = Annotated[str, typer.Option("--study-date", help="default: now")]
StudyTime = Annotated[str, typer.Option("--study-time", help="default: now")]
Referring = Annotated[str, typer.Option("--referring-physician", help="LAST^FIRST")]
StudyUid = Annotated[
    str, typer.Option("--study-uid", help="Add to this study (default: a new one per run)")
]
Modality = Annotated[str, typer.Option("--modality", help="e.g. XC, ES, OT, DOC")]
SopClass = Annotated[
    str, typer.Option("--sop-class", help="SOP Class UID for every file (default: the table)")
]
VideoFormat = Annotated[
    str,
    typer.Option(
        "--video-format", help="auto, mpeg2-mpml, mpeg2-mphl, h264-hp41, h264-bd, h264-hp42"
    ),
]
Jpeg = Annotated[bool, typer.Option("--jpeg", help="PNG/BMP/GIF/TIFF as JPEG Baseline")]
TiffSplit = Annotated[bool, typer.Option("--tiff-split", help="One object per TIFF page")]
Info = Annotated[str, typer.Option("--info", help="Value for the additional-info tag")]
# worklist / tag updates (sendtopacs/cli_worklist.py)
WorklistOpt = Annotated[
    str | None, typer.Option("--worklist", help="Worklist device giving the patient data")
]
SearchOpt = Annotated[
    list[str] | None,
    typer.Option("--search", help="Worklist search KEY=VALUE (repeat): patient_id, ..."),
]
PickOpt = Annotated[
    int | None,
    typer.Option("--pick", help="With --search: take the Nth match (1-based) of several"),
]
FromFilenameOpt = Annotated[
    str | None,
    typer.Option("--from-filename", help="File-name pattern, e.g. '{PatientID}_{LastName}_*'"),
]
ReplaceWlOpt = Annotated[
    bool,
    typer.Option("--replace-worklist-info", help="DICOM inputs: patient/study from the worklist"),
]
TagUpdateOpt = Annotated[
    list[str] | None, typer.Option("--tag-update", help="'Keyword=template' (repeat)")
]
IfEmptyOpt = Annotated[bool, typer.Option("--if-empty", help="Tag updates: only empty values")]
CreateOpt = Annotated[bool, typer.Option("--create", help="Tag updates: create if missing")]


def _objects(
    settings: Settings,
    device: Device | None,
    patient_args: tuple[str, ...],
    overrides: dict[str, object],
    worklist: str | None,
    search: list[str] | None,
    pick: int | None,
    from_filename: str | None,
    replace: bool,
    tag_update: list[str] | None,
    if_empty: bool,
    create: bool,
    calling: str,
) -> Objects:
    """What convert / send make of each file (patient data typed in or from a worklist)."""

    def make_converter(patient: PatientInfo, modality: str) -> Converter:
        extra = dict(overrides)
        if modality and not extra.get("modality"):
            extra["modality"] = modality
        return _converter(settings, device, patient, **extra)

    return Objects(
        settings,
        make_patient=lambda: _patient(*patient_args),
        make_converter=make_converter,
        manual=any(patient_args),
        worklist=worklist,
        searches=search or [],
        pick=pick,
        from_filename=from_filename,
        replace=replace,
        tag_updates=tag_update or [],
        if_empty=if_empty,
        create=create,
        calling=calling,
    )


def _patient(
    patient_id: str,
    patient_name: str,
    birth_date: str,
    sex: str,
    accession: str,
    study_description: str,
    study_date: str,
    study_time: str,
    referring_physician: str,
    study_uid: str,
) -> PatientInfo:
    info = PatientInfo(
        patient_id=patient_id,
        birth_date=birth_date,
        sex=sex,
        accession_number=accession,
        study_description=study_description,
        study_date=study_date,
        study_time=study_time,
        referring_physician=referring_physician,
        study_instance_uid=study_uid,
    )
    try:
        info.set_name(patient_name)
        return info.validate()
    except PatientInfoError as exc:
        for line in exc.errors:
            err.print(f"[red]invalid patient data: {line}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc


def _converter(
    settings: Settings, device: Device | None, patient: PatientInfo, **overrides: object
) -> Converter:
    from pacsbox.sendtopacs.convert import ConvertError

    try:
        return Converter(patient, settings.convert_options(device, **overrides))
    except (ConvertError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc


@app.command()
def convert(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder")],
    patient_id: PatientId = "",
    patient_name: PatientName = "",
    birth_date: BirthDate = "",
    sex: Sex = "",
    accession: Accession = "",
    study_description: StudyDesc = "",
    study_date: StudyDate = "",
    study_time: StudyTime = "",
    referring_physician: Referring = "",
    study_uid: StudyUid = "",
    modality: Modality = "",
    sop_class: SopClass = "",
    video_format: VideoFormat = "",
    jpeg: Jpeg = False,
    tiff_split: TiffSplit = False,
    info: Info = "",
    worklist: WorklistOpt = None,
    search: SearchOpt = None,
    pick: PickOpt = None,
    from_filename: FromFilenameOpt = None,
    tag_update: TagUpdateOpt = None,
    if_empty: IfEmptyOpt = False,
    create: CreateOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Convert images, PDFs and videos into DICOM files in OUT (one study per run, or per
    worklist entry with --worklist / --from-filename)."""
    from pacsbox.sendtopacs.convert import ConvertError

    settings = _settings()
    objects = _objects(
        settings,
        None,
        (
            patient_id,
            patient_name,
            birth_date,
            sex,
            accession,
            study_description,
            study_date,
            study_time,
            referring_physician,
            study_uid,
        ),
        {
            "modality": modality,
            "sop_class": sop_class,
            "video_format": video_format,
            "image_encoding": "jpeg" if jpeg else None,
            "tiff_split": tiff_split or None,
            "additional_value": info,
        },
        worklist,
        search,
        pick,
        from_filename,
        False,
        tag_update,
        if_empty,
        create,
        settings.ae_title,
    )
    files = _files(paths)
    objects.plan(files, set(files))
    rows: list[dict[str, object]] = []
    failed = 0
    for path in files:
        try:
            for item in objects.make(path, False) or []:
                target = item.save(out)
                ds = item.dataset
                rows.append(
                    {
                        "file": str(path),
                        "ok": True,
                        "output": str(target),
                        "sop_class": str(ds.SOPClassUID),
                        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
                        "study_instance_uid": str(ds.StudyInstanceUID),
                        "patient_id": str(ds.PatientID),
                        "note": item.note,
                    }
                )
        except (ConvertError, OSError, ValueError) as exc:
            failed += 1
            rows.append({"file": str(path), "ok": False, "error": str(exc)})
    if as_json:
        studies = list(dict.fromkeys(str(r["study_instance_uid"]) for r in rows if r["ok"]))
        study = studies[0] if studies else ""
        print(json.dumps({"study_instance_uid": study, "files": rows}, indent=1))
    else:
        for row in rows:
            if row["ok"]:
                console.print(f"{row['file']} → {row['output']} ({row['note']})")
            else:
                console.print(f"[red]{row['file']}: {row['error']}[/red]")
        console.print(f"{len(rows) - failed} object(s) written, {failed} file(s) failed")
    raise typer.Exit(EXIT_FAILED if failed or not rows else 0)


def _target_device(
    settings: Settings, to: str | None, host: str | None, port: int | None, aec: str | None
) -> Device:
    """``--to DEVICE``; or an ad-hoc device from --host/--port/--aec; or the default device;
    or 127.0.0.1:11112 PACSBOX (the former ``sendtopacs send`` defaults)."""
    try:
        if to:
            return settings.device(to)
        if host or port or aec or not settings.devices:
            return Device("adhoc", aec or "PACSBOX", host or "127.0.0.1", port or 11112).validate()
        return settings.device(None)
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc


@app.command()
def send(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders")],
    to: Annotated[
        str | None, typer.Option("--to", help="Device name (default: the default)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Ad-hoc destination host")] = None,
    port: Annotated[int | None, typer.Option(help="Ad-hoc destination port")] = None,
    aec: Annotated[str | None, typer.Option("--aec", help="Ad-hoc called AE title")] = None,
    aet: Annotated[str | None, typer.Option("--aet", help="Our AE title")] = None,
    patient_id: PatientId = "",
    patient_name: PatientName = "",
    birth_date: BirthDate = "",
    sex: Sex = "",
    accession: Accession = "",
    study_description: StudyDesc = "",
    study_date: StudyDate = "",
    study_time: StudyTime = "",
    referring_physician: Referring = "",
    study_uid: StudyUid = "",
    modality: Modality = "",
    sop_class: SopClass = "",
    video_format: VideoFormat = "",
    jpeg: Jpeg = False,
    tiff_split: TiffSplit = False,
    info: Info = "",
    worklist: WorklistOpt = None,
    search: SearchOpt = None,
    pick: PickOpt = None,
    from_filename: FromFilenameOpt = None,
    replace_worklist_info: ReplaceWlOpt = False,
    tag_update: TagUpdateOpt = None,
    if_empty: IfEmptyOpt = False,
    create: CreateOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """C-STORE files to a device: DICOM files as they are (or re-mapped to a worklist entry /
    changed by tag updates), others converted first."""
    from pacsbox.sendtopacs.convert import ConvertError
    from pacsbox.sendtopacs.send import ItemResult, SendItem, send_items

    settings = _settings()
    device = _target_device(settings, to, host, port, aec)
    files = _files(paths)
    items: list[SendItem] = []
    failures: list[ItemResult] = []
    non_dicom = {p for p in files if not _is_dicom(p)}
    objects = _objects(
        settings,
        device,
        (
            patient_id,
            patient_name,
            birth_date,
            sex,
            accession,
            study_description,
            study_date,
            study_time,
            referring_physician,
            study_uid,
        ),
        {
            "modality": modality,
            "sop_class": sop_class,
            "video_format": video_format,
            "image_encoding": "jpeg" if jpeg else None,
            "tiff_split": tiff_split or None,
            "additional_value": info,
        },
        worklist,
        search,
        pick,
        from_filename,
        replace_worklist_info,
        tag_update,
        if_empty,
        create,
        aet or settings.ae_title,
    )
    objects.plan(files, non_dicom)
    for path in files:
        try:
            made = objects.make(path, path not in non_dicom)
            if made is None:
                items.append(SendItem.from_file(path))
            else:
                items.extend(SendItem.from_dataset(str(path), c.dataset) for c in made)
        except (ConvertError, OSError, ValueError) as exc:
            failures.append(ItemResult(str(path), "", False, None, f"not sent: {exc}"))

    def show(res: ItemResult) -> None:
        if as_json:
            return
        if res.ok:
            console.print(f"[green]✓[/green] {res.label}: {res.message}")
        else:
            console.print(f"[red]✗ {res.label}: {res.message}[/red]")

    for res in failures:
        show(res)
    result = send_items(items, device, aet or settings.ae_title, progress=show)
    result.results[:0] = failures
    if as_json:
        print(json.dumps(result.as_dict(), indent=1))
    else:
        console.print(
            f"{len(result.sent)} sent, {len(result.failed)} failed to {device.name} "
            f"({device.ae_title}@{device.host}:{device.port}), "
            f"{result.associations} association(s)"
        )
    raise typer.Exit(0 if result.ok and result.results else EXIT_FAILED)


@app.command("echo")
def echo_cmd(
    device_name: Annotated[str | None, typer.Argument(metavar="[DEVICE]")] = None,
    host: Annotated[str | None, typer.Option(help="Ad-hoc host")] = None,
    port: Annotated[int | None, typer.Option(help="Ad-hoc port")] = None,
    aec: Annotated[str | None, typer.Option("--aec", help="Ad-hoc called AE title")] = None,
    aet: Annotated[str | None, typer.Option("--aet", help="Our AE title")] = None,
    as_json: JsonOpt = False,
) -> None:
    """C-ECHO a device (by name, the default one, or --host/--port/--aec)."""
    from pacsbox.sendtopacs.send import echo_device

    settings = _settings()
    device = _target_device(settings, device_name, host, port, aec)
    ok, message = echo_device(device, aet or settings.ae_title)
    if as_json:
        print(json.dumps({"device": device.name, "ok": ok, "message": message}))
    else:
        console.print(message if ok else f"[red]{message}[/red]")
    raise typer.Exit(0 if ok else EXIT_FAILED)


# -- devices -----------------------------------------------------------------------------------
def _save(settings: Settings) -> None:
    try:
        path = settings.save()
    except (SettingsError, OSError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc
    console.print(f"saved {path}")


@devices_app.command("list")
def devices_list(as_json: JsonOpt = False) -> None:
    """List the destination devices."""
    settings = _settings()
    if as_json:
        print(json.dumps([d.as_dict() for d in settings.devices], indent=1))
        return
    if not settings.devices:
        console.print("no devices (sendtopacs devices add NAME --aec AE --host H --port P)")
    for d in settings.devices:
        flags = [f for f, on in (("default", d.default), ("decompress", d.decompress)) if on]
        per = d.files_per_association or "all"
        console.print(
            f"{d.name}: {d.ae_title}@{d.host}:{d.port} files/association={per} "
            f"charset={d.character_set or '-'} {' '.join(flags)} {d.description}".rstrip()
        )


@devices_app.command("add")
def devices_add(
    name: str,
    aec: Annotated[str, typer.Option("--aec", help="The device's AE title")],
    host: Annotated[str, typer.Option()],
    port: Annotated[int, typer.Option()],
    description: Annotated[str, typer.Option()] = "",
    charset: Annotated[str, typer.Option(help="e.g. ISO_IR 192, ISO_IR 100")] = "",
    decompress: Annotated[bool, typer.Option(help="Send Explicit VR Little Endian only")] = False,
    files_per_association: Annotated[int, typer.Option(help="0 = all on one")] = 0,
    default: Annotated[bool, typer.Option("--default")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds")] = 30.0,
) -> None:
    """Add a destination device."""
    settings = _settings()
    try:
        settings.add_device(
            Device(
                name,
                aec,
                host,
                port,
                description,
                charset,
                decompress,
                files_per_association,
                default,
                timeout,
            )
        )
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc
    _save(settings)


@devices_app.command("edit")
def devices_edit(
    name: str,
    aec: Annotated[str | None, typer.Option("--aec")] = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    description: Annotated[str | None, typer.Option()] = None,
    charset: Annotated[str | None, typer.Option()] = None,
    decompress: Annotated[bool | None, typer.Option("--decompress/--no-decompress")] = None,
    files_per_association: Annotated[int | None, typer.Option()] = None,
    timeout: Annotated[float | None, typer.Option()] = None,
) -> None:
    """Change a device's values (only those given)."""
    settings = _settings()
    try:
        dev = settings.device(name)
        for attr, value in (
            ("ae_title", aec),
            ("host", host),
            ("port", port),
            ("description", description),
            ("character_set", charset),
            ("decompress", decompress),
            ("files_per_association", files_per_association),
            ("timeout", timeout),
        ):
            if value is not None:
                setattr(dev, attr, value)
        dev.validate()
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc
    _save(settings)


@devices_app.command("remove")
def devices_remove(name: str) -> None:
    """Remove a device."""
    settings = _settings()
    try:
        settings.remove_device(name)
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc
    _save(settings)


@devices_app.command("default")
def devices_default(name: str) -> None:
    """Make a device the default destination."""
    settings = _settings()
    try:
        settings.set_default(name)
    except SettingsError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc
    _save(settings)


# -- service and monitor (SPEC S6, S7) ----------------------------------------------------------
service_app = typer.Typer(
    help="The background service: folder monitors + HTTP API + web UI on 127.0.0.1.",
    invoke_without_command=True,
)
app.add_typer(service_app, name="service")
monitor_app = typer.Typer(
    help="Watched folders: run them in the foreground, or list/add/remove them.",
    invoke_without_command=True,
)
app.add_typer(monitor_app, name="monitor")
SettingsOpt = Annotated[
    Path | None, typer.Option("--settings", help="Settings file (same as the global --config)")
]


def _use_settings(path: Path | None) -> None:
    if path is not None:
        state.config = path


@service_app.callback()
def service_run(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: settings, 8765)")] = None,
    settings_file: SettingsOpt = None,
    no_monitors: Annotated[bool, typer.Option("--no-monitors", help="API only")] = False,
) -> None:
    """Run the service in the foreground (stop it with Ctrl-C or SIGTERM)."""
    _use_settings(settings_file)
    if ctx.invoked_subcommand is not None:
        return
    from pacsbox.sendtopacs.service import AlreadyRunning, ServiceError, run

    _settings()  # a clear message for a broken settings file
    try:
        code = run(state.config, port=port, monitors=not no_monitors)
    except AlreadyRunning as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from exc
    except (ServiceError, SettingsError, OSError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc
    raise typer.Exit(code)


@service_app.command("set-credentials")
def service_set_credentials(
    username: str,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Require HTTP Basic for the API (a strong password: ≥ 12 characters, upper, lower,
    digit, special); only its argon2 hash is stored."""
    import sys

    from pacsbox.sendtopacs.service import ServiceError, set_credentials

    settings = _settings()
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        set_credentials(settings, username, password)
    except ServiceError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc
    _save(settings)


@service_app.command("install-desktop")
def service_install_desktop() -> None:
    """Desktop entries: open the web UI, and "Send to PACS" for selected files (Open with,
    Nautilus script, Dolphin service menu) — in $XDG_DATA_HOME (~/.local/share)."""
    from pacsbox.sendtopacs.service import install_desktop

    for path in install_desktop(_settings()):
        console.print(f"wrote {path}")


@app.command("add")
def add_files(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders")],
    url: Annotated[str | None, typer.Option(help="Service URL (default: the settings')")] = None,
) -> None:
    """Add files to the list of the running service (what "Send to PACS" in a file manager
    does). Credentials: $SENDTOPACS_API_USER and $SENDTOPACS_API_PASSWORD."""
    from pacsbox.sendtopacs.service import ServiceError, add_to_running_service, service_url

    settings = _settings()
    user = os.environ.get("SENDTOPACS_API_USER", "")
    auth = (user, os.environ.get("SENDTOPACS_API_PASSWORD", "")) if user else None
    try:
        body = add_to_running_service(paths, url or service_url(settings), auth)
    except ServiceError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_FAILED) from exc
    for line in body.get("errors", []):
        err.print(f"[red]{line}[/red]")
    console.print(f"{len(body.get('added', []))} file(s) added to the list")
    raise typer.Exit(EXIT_FAILED if body.get("errors") else 0)


@service_app.command("clear-credentials")
def service_clear_credentials() -> None:
    """Open the API again to every allowed address without a password."""
    from pacsbox.sendtopacs.service import clear_credentials

    settings = _settings()
    clear_credentials(settings)
    _save(settings)


@monitor_app.callback()
def monitor_run(ctx: typer.Context, settings_file: SettingsOpt = None) -> None:
    """Run only the folder monitors in the foreground (no HTTP API)."""
    _use_settings(settings_file)
    if ctx.invoked_subcommand is not None:
        return
    from pacsbox.sendtopacs.service import AlreadyRunning, ServiceError, run_monitors

    _settings()
    try:
        code = run_monitors(state.config)
    except AlreadyRunning as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(3) from exc
    except (ServiceError, SettingsError, OSError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_USAGE) from exc
    raise typer.Exit(code)


@monitor_app.command("list")
def monitor_list(as_json: JsonOpt = False) -> None:
    """List the watched folders."""
    settings = _settings()
    if as_json:
        print(json.dumps(settings.monitors, indent=1))
        return
    if not settings.monitors:
        console.print("no monitored folders (sendtopacs monitor add PATH --failed-dir DIR)")
    for m in settings.monitors:
        console.print(
            f"{m.get('path')}: {m.get('mode', 'auto-forward')} via {m.get('method', 'events')}"
            f" → {m.get('device') or 'default device'} failed={m.get('failed_dir', '')}"
        )


@monitor_app.command("add")
def monitor_add(
    path: Path,
    mode: Annotated[str, typer.Option(help="auto-forward or add-to-list")] = "auto-forward",
    method: Annotated[str, typer.Option(help="events or polling")] = "events",
    poll_interval: Annotated[float, typer.Option(help="Seconds between scans")] = 60.0,
    batch_size: Annotated[int, typer.Option(help="Files per scan")] = 100,
    stable_seconds: Annotated[float, typer.Option(help="Unchanged this long = complete")] = 2.0,
    device: Annotated[str, typer.Option("--to", help="Device (default: the default)")] = "",
    retry_count: Annotated[int, typer.Option(help="Sending attempts in all")] = 3,
    retry_interval: Annotated[float, typer.Option(help="Seconds between attempts")] = 60.0,
    failed_dir: Annotated[Path | None, typer.Option(help="Failed files go here")] = None,
    success_dir: Annotated[
        Path | None, typer.Option(help="Move sent files here (default: delete them)")
    ] = None,
    no_recursive: Annotated[bool, typer.Option("--no-recursive")] = False,
    patient_id: PatientId = "",
    patient_name: PatientName = "",
) -> None:
    """Watch a folder."""
    from pacsbox.sendtopacs.monitor import MonitorConfig

    settings = _settings()
    cfg = MonitorConfig(
        path=str(path.resolve()),
        recursive=not no_recursive,
        mode=mode,
        method=method,
        poll_interval=poll_interval,
        batch_size=batch_size,
        stable_seconds=stable_seconds,
        device=device,
        retry_count=retry_count,
        retry_interval=retry_interval,
        failed_dir=str(failed_dir.resolve()) if failed_dir else "",
        remove_sent=success_dir is None,
        success_dir=str(success_dir.resolve()) if success_dir else "",
        patient={
            k: v for k, v in (("patient_id", patient_id), ("patient_name", patient_name)) if v
        },
    )
    settings.monitors = [
        m for m in settings.monitors if Path(m.get("path", "")).resolve() != path.resolve()
    ] + [cfg.to_json()]
    _save(settings)


@monitor_app.command("remove")
def monitor_remove(path: Path) -> None:
    """Stop watching a folder."""
    settings = _settings()
    before = len(settings.monitors)
    settings.monitors = [
        m for m in settings.monitors if Path(m.get("path", "")).resolve() != path.resolve()
    ]
    if len(settings.monitors) == before:
        err.print(f"[red]{path} is not monitored[/red]")
        raise typer.Exit(EXIT_USAGE)
    _save(settings)


app.command("worklist")(worklist_cmd)
app.add_typer(worklist_devices_app, name="worklist-devices")


def main() -> None:
    app()

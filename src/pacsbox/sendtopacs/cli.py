"""The ``sendtopacs`` command line (SPEC S7): ``convert`` non-DICOM files into DICOM,
``send`` files to a device (non-DICOM ones converted on the fly, DICOM ones as they are),
``echo`` a device, and manage ``devices`` in the settings file.

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
    as_json: JsonOpt = False,
) -> None:
    """Convert images, PDFs and videos into DICOM files in OUT (one study per run)."""
    from pacsbox.sendtopacs.convert import ConvertError

    settings = _settings()
    patient = _patient(
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
    )
    conv = _converter(
        settings,
        None,
        patient,
        modality=modality,
        sop_class=sop_class,
        video_format=video_format,
        image_encoding="jpeg" if jpeg else None,
        tiff_split=tiff_split or None,
        additional_value=info,
    )
    rows: list[dict[str, object]] = []
    failed = 0
    for path in _files(paths):
        try:
            for item in conv.convert(path):
                target = item.save(out)
                ds = item.dataset
                rows.append(
                    {
                        "file": str(path),
                        "ok": True,
                        "output": str(target),
                        "sop_class": str(ds.SOPClassUID),
                        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
                        "note": item.note,
                    }
                )
        except (ConvertError, OSError) as exc:
            failed += 1
            rows.append({"file": str(path), "ok": False, "error": str(exc)})
    if as_json:
        print(json.dumps({"study_instance_uid": conv.study_uid, "files": rows}, indent=1))
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
    as_json: JsonOpt = False,
) -> None:
    """C-STORE files to a device: DICOM files as they are, others converted first."""
    from pacsbox.sendtopacs.convert import ConvertError
    from pacsbox.sendtopacs.send import ItemResult, SendItem, send_items

    settings = _settings()
    device = _target_device(settings, to, host, port, aec)
    files = _files(paths)
    items: list[SendItem] = []
    failures: list[ItemResult] = []
    non_dicom = [p for p in files if not _is_dicom(p)]
    conv = None
    if non_dicom:
        patient = _patient(
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
        )
        conv = _converter(
            settings,
            device,
            patient,
            modality=modality,
            sop_class=sop_class,
            video_format=video_format,
            image_encoding="jpeg" if jpeg else None,
            tiff_split=tiff_split or None,
            additional_value=info,
        )
    for path in files:
        try:
            if conv is not None and path in non_dicom:
                for item in conv.convert(path):
                    items.append(SendItem.from_dataset(str(path), item.dataset))
            else:
                items.append(SendItem.from_file(path))
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


def main() -> None:
    app()

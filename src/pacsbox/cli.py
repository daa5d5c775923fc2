"""The ``pacsbox`` command line: serve, init, ae, import, check, echo, find, stats.

Every subcommand takes ``--config FILE`` (else ``$PACSBOX_CONFIG``, else ./pacsbox.toml), so
operators and scripts act on the same database and data folder as the running archive.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from pacsbox import __version__
from pacsbox.settings import Settings, SettingsError, config_path, load_settings

app = typer.Typer(
    help="pacsbox — a complete PACS in one package.", no_args_is_help=True, add_completion=False
)
ae_app = typer.Typer(help="The AE registry: remote DICOM nodes allowed to talk to pacsbox.")
app.add_typer(ae_app, name="ae")
user_app = typer.Typer(help="Web users, their roles and API tokens (SPEC E3).")
app.add_typer(user_app, name="user")
token_app = typer.Typer(help="API tokens (Authorization: Bearer) of a user.")
user_app.add_typer(token_app, name="token")
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Settings file (default $PACSBOX_CONFIG or ./pacsbox.toml)"
    ),
]


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except SettingsError as exc:
        err.print(f"[red]pacsbox: {exc}[/red]")
        raise typer.Exit(2) from exc


def _archive(config: Path | None):  # noqa: ANN202 - returns app.Archive
    from pacsbox.app import build_archive

    settings = _settings(config)
    try:
        return build_archive(settings)
    except Exception as exc:
        err.print(f"[red]pacsbox: cannot open the archive index: {exc}[/red]")
        raise typer.Exit(2) from exc


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"pacsbox {__version__}")


@app.command()
def init(config: ConfigOpt = None) -> None:
    """Create the settings file with defaults (if missing), the data folder and the index."""
    from pacsbox.settings import write_default_config

    path = config_path(config)
    if write_default_config(path):
        console.print(f"created {path} with default settings")
    archive = _archive(path)
    console.print(f"index ready: {archive.settings.masked()['database_url']}")
    from pacsbox.archive.users import UserDirectory

    password = UserDirectory(archive.engine).ensure_default_admin()
    if password:  # shown once, stored nowhere (docs/admin.md)
        console.print(
            "created the administrator account\n"
            f"    user name: admin\n    password:  {password}\n"
            "It is shown only this once and must be changed at the first login "
            "(lost it? pacsbox user passwd admin)."
        )


@app.command()
def serve(config: ConfigOpt = None) -> None:
    """Run the archive: DICOM (and TLS) listeners with worker processes."""
    from pacsbox.app import serve as run_serve

    settings = _settings(config)
    raise typer.Exit(run_serve(settings))


# -- AE registry --------------------------------------------------------------------------
def _registry(config: Path | None):  # noqa: ANN202
    return _archive(config).registry


@ae_app.command("add")
def ae_add(
    title: str,
    host: Annotated[str, typer.Option(help="Host name or IP address of the node")],
    port: Annotated[int, typer.Option(help="Its DICOM port")],
    disabled: Annotated[bool, typer.Option("--disabled", help="Register but refuse it")] = False,
    description: Annotated[str, typer.Option(help="Free text")] = "",
    tls: Annotated[bool, typer.Option("--tls", help="Connect to it with DICOM TLS")] = False,
    config: ConfigOpt = None,
) -> None:
    """Register a remote AE."""
    from pacsbox.archive.registry import AEEntry, RegistryError

    try:
        entry = _registry(config).add(
            AEEntry(
                ae_title=title,
                host=host,
                port=port,
                enabled=not disabled,
                description=description,
                tls=tls,
            )
        )
    except RegistryError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"added {entry.ae_title} {entry.host}:{entry.port}")


@ae_app.command("edit")
def ae_edit(
    title: str,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    enabled: Annotated[bool | None, typer.Option("--enabled/--disabled")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    tls: Annotated[bool | None, typer.Option("--tls/--no-tls")] = None,
    retrieve: Annotated[
        bool | None, typer.Option("--retrieve/--no-retrieve", help="May C-MOVE/C-GET from us")
    ] = None,
    destination: Annotated[
        bool | None,
        typer.Option("--destination/--no-destination", help="May be a C-MOVE destination"),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Change a registered AE."""
    from pacsbox.archive.registry import RegistryError

    try:
        entry = _registry(config).edit(
            title,
            host=host,
            port=port,
            enabled=enabled,
            description=description,
            tls=tls,
            allow_retrieve=retrieve,
            is_destination=destination,
        )
    except RegistryError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"{entry.ae_title} {entry.host}:{entry.port} enabled={entry.enabled}")


@ae_app.command("remove")
def ae_remove(title: str, config: ConfigOpt = None) -> None:
    """Remove a registered AE."""
    from pacsbox.archive.registry import RegistryError

    try:
        _registry(config).remove(title)
    except RegistryError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"removed {title}")


@ae_app.command("list")
def ae_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    config: ConfigOpt = None,
) -> None:
    """List registered AEs."""
    entries = _registry(config).list()
    if as_json:
        print(json.dumps([e.as_dict() for e in entries], default=str, indent=2))
        return
    table = Table("AE title", "host", "port", "enabled", "TLS", "description", "last seen")
    for e in entries:
        table.add_row(
            e.ae_title,
            e.host,
            str(e.port),
            "yes" if e.enabled else "no",
            "yes" if e.tls else "",
            e.description,
            e.last_seen_at.isoformat(" ", "seconds") if e.last_seen_at else "",
        )
    console.print(table)


# -- import / check / stats / echo --------------------------------------------------------
@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders (recursive) or DICOMDIRs")],
    link: Annotated[bool, typer.Option("--link", help="Index files in place, do not copy")] = False,
    errors_to: Annotated[
        Path | None, typer.Option("--errors-to", help="Copy files that fail into this folder")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Import DICOM files into the archive through the same path as C-STORE."""
    from pacsbox.archive.importer import collect, import_paths

    archive = _archive(config)
    for p in paths:
        if not p.exists():
            err.print(f"[red]{p} does not exist[/red]")
            raise typer.Exit(2)
    files = list(collect(paths))
    columns = (
        TextColumn("[bold]import"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        task = progress.add_task("import", total=len(files), failed=0)
        failed = 0

        def step(_path: Path, outcome: str) -> None:
            nonlocal failed
            failed += outcome == "failed"
            progress.update(task, advance=1, failed=failed)

        report = import_paths(archive.ingest, files, link=link, errors_to=errors_to, progress=step)
    console.print(
        f"{report.stored} stored, {report.replaced} replaced, {report.kept} kept (duplicates), "
        f"{len(report.failed)} failed, {report.bytes / 1e6:.1f} MB"
    )
    if report.failed:
        table = Table("failed file", "reason")
        for path, reason in report.failed:
            table.add_row(path, reason)
        console.print(table)
        if errors_to:
            console.print(f"copies of the failed files are in {errors_to}")
        raise typer.Exit(1)


@app.command()
def check(
    repair: Annotated[bool, typer.Option("--repair", help="Fix what is found")] = False,
    grace: Annotated[float, typer.Option(help="Ignore files younger than this (s)")] = 60.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    config: ConfigOpt = None,
) -> None:
    """Compare the index with the stored files; exit 1 when they disagree."""
    from pacsbox.archive.check import check as run_check

    archive = _archive(config)
    quarantine = Path(archive.settings.data_dir) / "quarantine"
    report = run_check(archive.ingest, repair=repair, grace=grace, quarantine=quarantine)
    summary = {
        "instances": report.instances,
        "files": report.files,
        "missing_files": len(report.missing),
        "size_mismatches": len(report.size_mismatch),
        "orphan_files": len(report.orphans),
        "temp_files": len(report.temp_files),
        "repaired": report.repaired,
        "unrepaired": len(report.unrepaired),
    }
    ok = report.problems == 0 or (repair and report.consistent_after)
    status = "consistent" if report.problems == 0 else ("repaired" if ok else "INCONSISTENT")
    if as_json:
        print(
            json.dumps(
                {
                    **summary,
                    "status": status,
                    "missing": report.missing,
                    "size_mismatch": [
                        {"file": key, "indexed_size": indexed, "actual_size": actual}
                        for key, indexed, actual in report.size_mismatch
                    ],
                    "orphans": report.orphans,
                    "temp": report.temp_files,
                    "unrepaired_reasons": report.unrepaired,
                },
                indent=2,
            )
        )
    else:
        for key, value in summary.items():
            console.print(f"{key:16} {value}")
        for key in report.missing[:20]:
            console.print(f"  missing: {key}")
        for key, indexed, actual in report.size_mismatch[:20]:
            console.print(f"  size mismatch: {key} (index {indexed}, file {actual} bytes)")
        for key in report.orphans[:20]:
            console.print(f"  orphan:  {key}")
        for key in report.temp_files[:20]:
            console.print(f"  temp:    {key}")
        for path, reason in report.unrepaired[:20]:
            console.print(f"  not repaired: {path}: {reason}")
        console.print(status)
    raise typer.Exit(0 if ok else 1)


@app.command()
def stats(config: ConfigOpt = None) -> None:
    """Counts of patients, studies, series and instances."""
    from pacsbox.archive.index.writer import counts

    print(json.dumps(counts(_archive(config).engine)))


@app.command()
def echo(
    target: Annotated[str, typer.Argument(help="A registered AE title, or AE@HOST:PORT")],
    calling: Annotated[str | None, typer.Option(help="Calling AE title")] = None,
    config: ConfigOpt = None,
) -> None:
    """C-ECHO a remote AE (SPEC D1)."""
    from pacsbox.dicom.scu import SCUError
    from pacsbox.dicom.scu import echo as c_echo

    settings = _settings(config)
    if "@" in target:
        title, _, hostport = target.partition("@")
        host, _, port_text = hostport.rpartition(":")
        port = int(port_text)
    else:
        entry = _archive(config).registry.get(target)
        if entry is None:
            err.print(f"[red]{target} is not registered[/red]")
            raise typer.Exit(2)
        title, host, port = entry.ae_title, entry.host, entry.port
    try:
        status = c_echo(host, port, title, calling or settings.ae_title)
    except SCUError as exc:
        err.print(f"[red]echo {title}@{host}:{port} failed: {exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(
        f"echo {title}@{host}:{port}: status {status:#06x}" + (" (success)" if status == 0 else "")
    )
    raise typer.Exit(0 if status == 0 else 1)


# -- users (SPEC E3) ----------------------------------------------------------------------
def _users(config: Path | None):  # noqa: ANN202 - archive.users.UserDirectory
    from pacsbox.archive.users import UserDirectory

    return UserDirectory(_archive(config).engine)


def _read_password(given: str | None, from_stdin: bool, confirm: bool = True) -> str:
    """--password, else one line of stdin (--password-stdin), else a prompt on a terminal."""
    if given is not None:
        return given
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        err.print("[red]no password: use --password, --password-stdin or a terminal[/red]")
        raise typer.Exit(2)
    return typer.prompt("Password", hide_input=True, confirmation_prompt=confirm)


PasswordOpt = Annotated[
    str | None, typer.Option("--password", help="The password (prompted when omitted)")
]
PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input")
]


def _user_fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]{exc}[/red]")
    return typer.Exit(1)


@user_app.command("add")
def user_add(
    name: str,
    role: Annotated[str, typer.Option(help="admin, radiologist, technician, viewer or custom")],
    password: PasswordOpt = None,
    password_stdin: PasswordStdinOpt = False,
    full_name: Annotated[str, typer.Option(help="Display name")] = "",
    must_change: Annotated[
        bool, typer.Option("--must-change", help="Password must be changed at first login")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Create a web user."""
    from pacsbox.archive.users import UserError

    users = _users(config)
    secret = _read_password(password, password_stdin)
    try:
        user = users.add(name, role, secret, full_name=full_name, must_change_password=must_change)
    except UserError as exc:
        raise _user_fail(exc) from exc
    console.print(f"added {user.username} (role {user.role}: {', '.join(sorted(user.privileges))})")


@user_app.command("passwd")
def user_passwd(
    name: str,
    password: PasswordOpt = None,
    password_stdin: PasswordStdinOpt = False,
    must_change: Annotated[
        bool, typer.Option("--must-change", help="Password must be changed at next login")
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Set a user's password (ends the user's sessions)."""
    from pacsbox.archive.users import UserError

    users = _users(config)
    if users.get(name) is None:
        raise _user_fail(f"no user {name!r}")
    secret = _read_password(password, password_stdin)
    try:
        users.set_password(name, secret, must_change=must_change)
    except UserError as exc:
        raise _user_fail(exc) from exc
    console.print(f"password of {name} changed")


def _set_enabled(name: str, enabled: bool, config: Path | None) -> None:
    from pacsbox.archive.users import UserError

    try:
        _users(config).update(name, enabled=enabled)
    except UserError as exc:
        raise _user_fail(exc) from exc
    console.print(f"{name} {'enabled' if enabled else 'disabled'}")


@user_app.command("disable")
def user_disable(name: str, config: ConfigOpt = None) -> None:
    """Refuse a user from now on (ends the user's sessions; tokens stop working)."""
    _set_enabled(name, False, config)


@user_app.command("enable")
def user_enable(name: str, config: ConfigOpt = None) -> None:
    """Allow a disabled user again."""
    _set_enabled(name, True, config)


@user_app.command("list")
def user_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    config: ConfigOpt = None,
) -> None:
    """List web users."""
    users = _users(config).list()
    if as_json:
        print(json.dumps([u.as_dict() for u in users], default=str, indent=2))
        return
    table = Table("user", "role", "enabled", "must change password", "last login")
    for u in users:
        table.add_row(
            u.username,
            u.role,
            "yes" if u.enabled else "no",
            "yes" if u.must_change_password else "",
            u.last_login_at.isoformat(" ", "seconds") if u.last_login_at else "",
        )
    console.print(table)


@token_app.command("create")
def token_create(
    name: str,
    label: Annotated[str, typer.Option("--name", help="What the token is for")] = "",
    expires_days: Annotated[int | None, typer.Option(help="Valid this many days")] = None,
    config: ConfigOpt = None,
) -> None:
    """Create an API token for user NAME; it is printed once, only its hash is kept."""
    from pacsbox.archive.users import UserError

    try:
        info, secret = _users(config).create_token(name, label, expires_days)
    except UserError as exc:
        raise _user_fail(exc) from exc
    err.print(f"token {info.id} for {name} (shown only now; use: Authorization: Bearer TOKEN)")
    print(secret)


@token_app.command("revoke")
def token_revoke(token_id: int, config: ConfigOpt = None) -> None:
    """Revoke an API token by its id (see `pacsbox user token list`)."""
    from pacsbox.archive.users import UserError

    try:
        _users(config).revoke_token(token_id)
    except UserError as exc:
        raise _user_fail(exc) from exc
    console.print(f"token {token_id} revoked")


@token_app.command("list")
def token_list(
    name: Annotated[str | None, typer.Argument(help="Only this user's tokens")] = None,
    config: ConfigOpt = None,
) -> None:
    """List API tokens (never their secret)."""
    table = Table("id", "user", "name", "starts with", "created", "last used", "state")
    for t in _users(config).tokens(name):
        table.add_row(
            str(t.id),
            t.username,
            t.name,
            t.prefix + "…",
            t.created_at.isoformat(" ", "seconds"),
            t.last_used_at.isoformat(" ", "seconds") if t.last_used_at else "",
            "active" if t.active else ("revoked" if t.revoked_at else "expired"),
        )
    console.print(table)


def _target(target: str, config: Path | None) -> tuple[str, str, int]:
    """``AE@HOST:PORT`` or a registered AE title → (title, host, port)."""
    if "@" in target:
        title, _, hostport = target.partition("@")
        host, _, port_text = hostport.rpartition(":")
        try:
            return title, host, int(port_text)
        except ValueError as exc:
            err.print(f"[red]{target}: expected AE@HOST:PORT[/red]")
            raise typer.Exit(2) from exc
    entry = _archive(config).registry.get(target)
    if entry is None:
        err.print(f"[red]{target} is not registered[/red]")
        raise typer.Exit(2)
    return entry.ae_title, entry.host, entry.port


def _display(elem) -> str:  # noqa: ANN001 - a pydicom DataElement
    if elem.VR == "SQ":
        return f"<{len(elem.value)} item(s)>"
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


@app.command()
def find(
    target: Annotated[str, typer.Argument(help="A registered AE title, or AE@HOST:PORT")],
    key: Annotated[
        list[str] | None,
        typer.Option("-k", "--key", help="Keyword=Value or (gggg,eeee)=Value; repeat"),
    ] = None,
    level: Annotated[str, typer.Option(help="PATIENT, STUDY, SERIES or IMAGE")] = "STUDY",
    model: Annotated[str, typer.Option(help="patient, study or patient-study")] = "study",
    calling: Annotated[str | None, typer.Option(help="Calling AE title")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    config: ConfigOpt = None,
) -> None:
    """C-FIND a remote AE (PS3.4 Annex C), e.g. ``-k PatientName=SMITH* -k StudyDate``."""
    from pacsbox.dicom.scu import SCUError, parse_key
    from pacsbox.dicom.scu import find as c_find

    settings = _settings(config)
    title, host, port = _target(target, config)
    try:
        keys = [parse_key(k) for k in key or []]
        result = c_find(
            host,
            port,
            title,
            keys,
            model=model,
            level=level,
            calling=calling or settings.ae_title,
        )
    except SCUError as exc:
        err.print(f"[red]find {title}@{host}:{port} failed: {exc}[/red]")
        raise typer.Exit(1) from exc
    skip = {0x00080005, 0x00080052}
    if as_json:
        out = [
            {(e.keyword or f"{int(e.tag):08X}"): _display(e) for e in ds if int(e.tag) not in skip}
            for ds in result.matches
        ]
        print(json.dumps({"status": result.status, "comment": result.comment, "matches": out}))
    else:
        columns: list[int] = [tag for tag, _ in keys if tag not in skip]
        for ds in result.matches:
            columns += [int(e.tag) for e in ds if int(e.tag) not in skip | set(columns)]
        from pydicom.datadict import keyword_for_tag

        table = Table(*[keyword_for_tag(t) or f"{t:08X}" for t in columns])
        for ds in result.matches:
            table.add_row(*[_display(ds[t]) if t in ds else "" for t in columns])
        console.print(table)
        status = "no response" if result.status is None else f"{result.status:#06x}"
        err.print(f"{len(result.matches)} match(es), final status {status} {result.comment}")
    raise typer.Exit(0 if result.status == 0 else 1)


def _retrieve_identifier(
    patient: str | None,
    study: list[str] | None,
    series: list[str] | None,
    instance: list[str] | None,
) -> object:
    """Level = the lowest key given; higher keys ride along (hierarchical identifier)."""
    from pacsbox.dicom.scu import retrieve_identifier

    if instance:
        level = "IMAGE"
    elif series:
        level = "SERIES"
    elif study:
        level = "STUDY"
    elif patient:
        level = "PATIENT"
    else:
        err.print("[red]give --patient, --study, --series or --instance[/red]")
        raise typer.Exit(2)
    return retrieve_identifier(level, patient, study or (), series or (), instance or ())


def _retrieve_progress(as_json: bool):  # noqa: ANN202 - (progress, callback)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=as_json or not err.is_terminal,
    )
    task = progress.add_task("sub-operations", total=None)

    def step(report) -> None:  # noqa: ANN001 - scu.RetrieveReport
        done = report.completed + report.failed + report.warning
        total = done + (report.remaining or 0) if report.remaining is not None else None
        progress.update(task, completed=done, total=total)

    return progress, step


def _retrieve_result(report, as_json: bool, what: str) -> None:  # noqa: ANN001
    status = "no response" if report.status is None else f"{report.status:04X}"
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        console.print(
            f"{what}: status {status}: {report.completed} completed, {report.failed} failed, "
            f"{report.warning} warning" + (f" ({report.comment})" if report.comment else "")
        )
        if report.saved:
            console.print(f"{len(report.saved)} file(s) saved")
        for uid in report.failed_uids:
            console.print(f"  failed: {uid}")
    raise typer.Exit(0 if report.status == 0 else 1)


PatientOpt = Annotated[str | None, typer.Option("--patient", help="Patient ID (PATIENT level)")]
StudyOpt = Annotated[
    list[str] | None, typer.Option("--study", help="Study Instance UID; repeat for several")
]
SeriesOpt = Annotated[
    list[str] | None, typer.Option("--series", help="Series Instance UID; repeat")
]
InstanceOpt = Annotated[
    list[str] | None, typer.Option("--instance", help="SOP Instance UID; repeat")
]


def _retrieve(
    verb: str,
    target: str,
    dest: str | Path,
    patient: list[str] | None,
    study: list[str] | None,
    series: list[str] | None,
    instance: list[str] | None,
    model: str,
    calling: str | None,
    as_json: bool,
    config: Path | None,
) -> None:
    """The shared body of `move` and `get`: identifier, target, progress bar, report."""
    from pacsbox.dicom.scu import QR_MODELS, SCUError
    from pacsbox.dicom.scu import get as c_get
    from pacsbox.dicom.scu import move as c_move

    settings = _settings(config)
    if model not in QR_MODELS:
        err.print(f"[red]--model must be one of {', '.join(QR_MODELS)}[/red]")
        raise typer.Exit(2)
    identifier = _retrieve_identifier(patient, study, series, instance)
    title, host, port = _target(target, config)
    progress, step = _retrieve_progress(as_json)
    scu = c_move if verb == "move" else c_get
    try:
        with progress:
            report = scu(
                host,
                port,
                title,
                dest,  # type: ignore[arg-type]
                identifier,
                model=model,
                calling=calling or settings.ae_title,
                progress=step,
            )
    except (SCUError, ValueError, OSError) as exc:
        err.print(f"[red]{verb} from {title}@{host}:{port} failed: {exc}[/red]")
        raise typer.Exit(1) from exc
    _retrieve_result(report, as_json, f"{verb} {title} -> {dest}")


@app.command()
def move(
    target: Annotated[str, typer.Argument(help="Source: a registered AE title, or AE@HOST:PORT")],
    to: Annotated[str, typer.Option("--to", help="Move Destination AE title (known to source)")],
    patient: PatientOpt = None,
    study: StudyOpt = None,
    series: SeriesOpt = None,
    instance: InstanceOpt = None,
    model: Annotated[str, typer.Option(help="patient, study or patient-study")] = "study",
    calling: Annotated[str | None, typer.Option(help="Calling AE title")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    config: ConfigOpt = None,
) -> None:
    """C-MOVE a patient/study/series/instances from an AE to a destination AE (PS3.4 C.4.2)."""
    _retrieve("move", target, to, patient, study, series, instance, model, calling, as_json, config)


@app.command()
def get(
    target: Annotated[str, typer.Argument(help="Source: a registered AE title, or AE@HOST:PORT")],
    folder: Annotated[Path, typer.Argument(help="Where to write the received instances")],
    patient: PatientOpt = None,
    study: StudyOpt = None,
    series: SeriesOpt = None,
    instance: InstanceOpt = None,
    model: Annotated[str, typer.Option(help="patient, study or patient-study")] = "study",
    calling: Annotated[str | None, typer.Option(help="Calling AE title")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output")] = False,
    config: ConfigOpt = None,
) -> None:
    """C-GET a patient/study/series/instances from an AE into FOLDER (PS3.4 C.4.3)."""
    _retrieve(
        "get", target, folder, patient, study, series, instance, model, calling, as_json, config
    )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

"""The ``sendtopacs`` command line: ``send`` DICOM files as they are, ``echo`` a destination."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pacsbox.dicom.scu import SCUError, echo, send_files

app = typer.Typer(
    help="sendtopacs — send files to any PACS.", no_args_is_help=True, add_completion=False
)
console = Console()
Called = Annotated[str, typer.Option("--aec", help="Called AE title of the PACS")]
Calling = Annotated[str, typer.Option("--aet", help="Our AE title")]


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            for dirpath, _dirs, names in os.walk(path):
                out.extend(Path(dirpath) / n for n in sorted(names))
        else:
            out.append(path)
    return out


@app.command()
def send(
    paths: list[Path],
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 11112,
    aec: Called = "PACSBOX",
    aet: Calling = "SENDTOPACS",
) -> None:
    """C-STORE DICOM files (or folders of them) unchanged to a PACS."""
    try:
        report = send_files(_files(paths), host, port, aec, aet)
    except SCUError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"{len(report.sent)} sent, {len(report.failed)} failed")
    for path, reason in report.failed:
        console.print(f"  {path}: {reason}")
    raise typer.Exit(1 if report.failed else 0)


@app.command("echo")
def echo_cmd(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 11112,
    aec: Called = "PACSBOX",
    aet: Calling = "SENDTOPACS",
) -> None:
    """C-ECHO a PACS."""
    try:
        status = echo(host, port, aec, aet)
    except SCUError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"status {status:#06x}")
    raise typer.Exit(0 if status == 0 else 1)


def main() -> None:
    app()

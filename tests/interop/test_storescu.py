"""Interoperability with DCMTK as a client: echoscu, storescu (plain and TLS), sendtopacs.

Every test starts ``pacsbox serve`` as a subprocess (``make_server``) and talks to it with the
real DCMTK 3.6.7 command-line tools over 127.0.0.1. What the archive stored is checked through
its own index (``open_server_archive``) and against the bytes that travelled on the wire.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, generate_uid
from sqlalchemy import select

from pacsbox.archive.index.models import Instance, Patient, Series, Study
from pacsbox.dicom.contexts import RECEIVE_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from tests.helpers import (
    PYDICOM_TEST_FILES,
    VENV_BIN,
    Server,
    dataset_bytes,
    dcmtk_env,
    free_port,
    have,
    make_ct,
    open_server_archive,
    run_dcmtk,
    wait_for_log,
    write_study,
)

pytestmark = pytest.mark.interop

IN_CI = os.environ.get("CI", "").lower() == "true"
DCMTK_TOOLS = ("echoscu", "storescu", "storescp")

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

#: Storage instances in pydicom's test files that are deliberately broken or that DCMTK's
#: storescu cannot send at all; everything else with file meta, a Transfer Syntax UID and a
#: storage SOP class is sent. (DICOMDIRs, files without meta or without SOP Class UID and
#: non-DICOM files drop out by the rule in ``storage_test_files``.)
EXCLUDED = {
    "MR_truncated.dcm": "truncated in Pixel Data (DCMTK: premature end of stream)",
    "rtplan_truncated.dcm": "truncated inside a sequence (DCMTK: premature end of stream)",
    "SC_rgb_jpeg.dcm": (
        "deliberately mis-encoded: the meta says JPEG Baseline (explicit VR) but part of the "
        "data set is implicit VR; DCMTK cannot parse it"
    ),
    "rtdose_rle.dcm": (
        "every data element has VR UN (gdcmconv artefact); storescu finds no SOP Class/"
        "Instance UID in it and refuses to send it"
    ),
    "rtdose_rle_1frame.dcm": "same as rtdose_rle.dcm: all elements VR UN, storescu refuses",
}
#: Storage instances without Study and Series Instance UID (Type 1): not valid instances.
#: pacsbox must refuse them with A900; they are pydicom's only JPEG-LS Near-Lossless files,
#: so the corpus gets copies with the two UIDs added (pixel data untouched, same syntax).
NO_STUDY_UID = (
    "JPEGLSNearLossless_08.dcm",
    "JPEGLSNearLossless_16.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    "SC_rgb_jls_lossy_sample.dcm",
)


# -- tools ----------------------------------------------------------------------------------
def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: DCMTK is required)")
    pytest.skip(reason)


@pytest.fixture(scope="module", autouse=True)
def _dcmtk_installed() -> None:
    missing = [tool for tool in DCMTK_TOOLS if not have(tool)]
    if missing:
        _unavailable(f"DCMTK tool(s) {', '.join(missing)} not installed (apt-get install dcmtk)")


def dcmtk_has_tls() -> bool:
    out = subprocess.run(["storescu", "--version"], capture_output=True, text=True).stdout
    return "OpenSSL" in out


def require_tls() -> None:
    if not dcmtk_has_tls():
        _unavailable("this DCMTK build has no TLS support (storescu --version lists no OpenSSL)")


def addr(server: Server, port: int | None = None) -> list[str]:
    return ["-aec", server.ae_title, "127.0.0.1", str(port or server.port)]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def failed_stores(result: subprocess.CompletedProcess[str]) -> list[str]:
    """storescu's error lines ("E: Store Failed, file: ...", association errors) and, with
    ``-v``, every C-STORE response that is not Success. With ``-nh`` (go on after a failed
    store) storescu exits 0 and, below ``-v``, prints nothing when the peer answers a C-STORE
    with a failure status; without ``-nh`` it stops there with a non-zero exit code."""
    return [
        line
        for line in result.stderr.splitlines()
        if line.startswith(("E:", "F:"))
        or ("Received Store Response" in line and "(Success)" not in line)
    ]


def store_responses(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The statuses storescu -v logged, e.g. ["Success", "Error: DataSetDoesNotMatchSOPClass"]."""
    return re.findall(r"Received Store Response \((.*)\)", result.stderr)


def storescu_profile(cfg: Path, pairs: set[tuple[str, str]]) -> list[str]:
    """A storescu association profile (``-xf``) with one presentation context per
    (SOP class, transfer syntax) pair, each proposing that single syntax.

    storescu's own ``-x?`` options propose only uncompressed syntaxes plus at most one
    compressed family, and ``-R`` does not add the files' own syntaxes; with this profile every
    file finds a context in its own transfer syntax, so DCMTK sends it without conversion.
    """
    syntaxes = sorted({ts for _sc, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for n, (sop_class, ts) in enumerate(sorted(pairs), 1):
        lines.append(f"PresentationContext{n} = {sop_class}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", "[Files]", "PresentationContexts = Contexts"]
    assert len(pairs) <= 128, "PS3.8: at most 128 presentation contexts"
    cfg.write_text("\n".join(lines) + "\n", encoding="ascii")
    return ["-xf", str(cfg), "Files"]


def index_rows(server: Server, sop_uids: list[str]) -> dict[str, tuple[str, Path]]:
    """SOP Instance UID -> (transfer syntax in the index, absolute path of the stored file)."""
    archive = open_server_archive(server)
    try:
        table = Instance.__table__
        with archive.engine.connect() as conn:
            rows = conn.execute(
                select(
                    table.c.sop_instance_uid, table.c.transfer_syntax_uid, table.c.file_path
                ).where(table.c.sop_instance_uid.in_(sop_uids))
            ).all()
        return {uid: (ts, archive.store.path(key)) for uid, ts, key in rows}
    finally:
        archive.engine.dispose()


# -- the pydicom corpus ---------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusFile:
    name: str
    path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str


def corpus_file(path: Path, name: str | None = None) -> CorpusFile:
    ds = dcmread(path, stop_before_pixels=True)
    return CorpusFile(
        name or path.relative_to(PYDICOM_TEST_FILES).as_posix(),
        path,
        str(ds.SOPClassUID),
        str(ds.SOPInstanceUID),
        str(ds.file_meta.TransferSyntaxUID),
    )


def storage_test_files() -> list[CorpusFile]:
    """Every storage instance among pydicom's test files, minus ``EXCLUDED`` and
    ``NO_STUDY_UID``."""
    out = []
    for path in sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file()):
        try:
            ds = dcmread(path, stop_before_pixels=True)  # no force: needs the DICM prefix
        except Exception:
            continue  # not DICOM, or no file meta (ExplVR_*NoMeta.dcm, no_meta.dcm, ...)
        ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
        sop_class = str(ds.get("SOPClassUID", ""))
        # DICOMDIRs (no SOP Class UID in the data set, Media Storage Directory in the meta)
        # and the meta/no-SOP-class oddities (meta_missing_tsyntax, priv_SQ, ...) drop out here.
        if not ts or sop_class not in STORAGE_SOP_CLASSES:
            continue
        name = path.relative_to(PYDICOM_TEST_FILES).as_posix()
        if name in EXCLUDED or name in NO_STUDY_UID:
            continue
        out.append(corpus_file(path))
    return out


def repaired_copies(folder: Path) -> list[CorpusFile]:
    """``NO_STUDY_UID`` files with Study/Series Instance UID added (and a SOP Instance UID
    of their own, so the originals can be checked to stay out of the index)."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    out = []
    for name in NO_STUDY_UID:
        ds = dcmread(PYDICOM_TEST_FILES / name)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / name
        ds.save_as(path, enforce_file_format=True)  # encapsulated pixel data written as read
        out.append(corpus_file(path, f"{name} (with study/series UIDs)"))
    return out


def rounds_of(files: list[CorpusFile]) -> list[list[CorpusFile]]:
    """Split files into rounds with unique SOP Instance UIDs: several test files are the
    same instance in other transfer syntaxes (MR_small*), and duplicate_policy=replace would
    overwrite one with the next before we could compare it."""
    rounds: list[list[CorpusFile]] = []
    for f in files:
        for r in rounds:
            if all(g.sop_instance != f.sop_instance for g in r):
                r.append(f)
                break
        else:
            rounds.append([f])
    return rounds


@dataclass(frozen=True)
class Wire:
    transfer_syntax: str
    dataset: bytes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[list[CorpusFile]]:
    files = storage_test_files() + repaired_copies(tmp_path_factory.mktemp("repaired"))
    syntaxes = {f.transfer_syntax for f in files}
    # the corpus must cover what the test claims to cover
    assert len(files) > 100
    assert {
        EXPLICIT_LE,
        IMPLICIT_LE,
        EXPLICIT_BE,
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.5",
    } <= syntaxes, syntaxes
    return rounds_of(files)


@pytest.fixture(scope="module")
def dcmtk_wire(
    corpus: list[list[CorpusFile]], tmp_path_factory: pytest.TempPathFactory
) -> dict[Path, Wire]:
    """What storescu actually puts on the wire for each file, captured by DCMTK's own
    bit-preserving receiver (``storescp +B``: writes the data set exactly as received).

    storescu does not send files unchanged: it parses them and encodes the data set again
    (DcmDataset::write on the association), which drops data set trailing padding
    (FFFC,FFFC), turns undefined-length sequences and items into explicit lengths,
    recomputes or drops group lengths (gggg,0000), re-deflates Deflated Explicit VR LE with
    its own zlib settings, and pads odd-length values. The transfer syntax itself is kept
    (one context per syntax, see ``storescu_profile``). pacsbox must store exactly these
    bytes; for the files DCMTK leaves untouched they equal the original file's data set.
    """
    base = tmp_path_factory.mktemp("storescp")
    out = base / "received"
    out.mkdir()
    port = free_port()
    log = open(base / "storescp.log", "wb")  # noqa: SIM115 - closed below
    scp = subprocess.Popen(
        ["storescp", "+B", "+xa", "-pm", "-aet", "STORESCP", "-od", str(out), str(port)],
        env=dcmtk_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wire: dict[Path, Wire] = {}
    try:
        _wait_port(port, scp)
        for n, round_ in enumerate(corpus):
            for old in out.iterdir():
                old.unlink()
            profile = storescu_profile(
                base / f"r{n}.cfg", {(f.sop_class, f.transfer_syntax) for f in round_}
            )
            result = run_dcmtk(
                ["storescu", *profile, "-v", "-nh", "-aec", "STORESCP", "127.0.0.1", str(port)]
                + [str(f.path) for f in round_]
            )
            assert not failed_stores(result), result.stderr
            received = {p.name.split(".", 1)[1]: p for p in out.iterdir()}
            for f in round_:
                got = received.get(f.sop_instance)
                assert got is not None, f"storescp did not receive {f.name}"
                meta_ts = str(read_file_meta_info(got).TransferSyntaxUID)
                wire[f.path] = Wire(meta_ts, dataset_bytes(got))
    finally:
        scp.terminate()
        scp.wait(10)
        log.close()
    return wire


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "receiver exited"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


# -- 1. C-ECHO and AE access control ---------------------------------------------------------
def test_echo_registered_unknown_and_disabled_aes(make_server):
    server = make_server()
    ok(server.cli("ae", "add", "ECHOER", "--host", "127.0.0.1", "--port", "104"))
    ok(server.cli("ae", "add", "SLEEPER", "--host", "127.0.0.1", "--port", "104", "--disabled"))

    ok(run_dcmtk(["echoscu", "-aet", "ECHOER", *addr(server)]))

    stranger = run_dcmtk(["echoscu", "-aet", "STRANGER", *addr(server)])
    assert stranger.returncode != 0
    assert "Rejected" in stranger.stderr or "rejected" in stranger.stderr.lower()
    log = wait_for_log(server, "calling=STRANGER")
    line = next(x for x in log.splitlines() if "calling=STRANGER" in x)
    assert "rejected association" in line and "not registered" in line

    sleeper = run_dcmtk(["echoscu", "-aet", "SLEEPER", *addr(server)])
    assert sleeper.returncode != 0
    log = wait_for_log(server, "calling=SLEEPER")
    line = next(x for x in log.splitlines() if "calling=SLEEPER" in x)
    assert "rejected association" in line and "disabled" in line

    # the unknown AE was not registered by being rejected
    listed = json.loads(ok(server.cli("ae", "list", "--json")).stdout)
    assert sorted(e["ae_title"] for e in listed) == ["ECHOER", "SLEEPER"]


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
def test_echo_permissive_registers_unknown_ae(make_server, enabled):
    server = make_server(
        PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED=str(enabled).lower()
    )
    ok(run_dcmtk(["echoscu", "-aet", "NEWCOMER", *addr(server)]))
    wait_for_log(server, "auto-registered calling AE NEWCOMER")

    listed = json.loads(ok(server.cli("ae", "list", "--json")).stdout)
    entry = next(e for e in listed if e["ae_title"] == "NEWCOMER")
    assert entry["auto_registered"] is True
    assert entry["enabled"] is enabled
    assert entry["host"] == "127.0.0.1"

    # Registered disabled means "for review": its next association is refused.
    again = run_dcmtk(["echoscu", "-aet", "NEWCOMER", *addr(server)])
    assert (again.returncode == 0) is enabled, again.stderr

    # A calling AE title that is not a valid AE value (backslash, PS3.5 AE VR) is neither
    # accepted nor registered, even in permissive mode.
    bad = run_dcmtk(["echoscu", "-aet", "BAD\\TITLE", *addr(server)])
    assert bad.returncode != 0, bad.stdout + bad.stderr
    listed = json.loads(ok(server.cli("ae", "list", "--json")).stdout)
    assert [e["ae_title"] for e in listed] == ["NEWCOMER"]


# -- 2. every storage file of the pydicom corpus, in its own transfer syntax ----------------
def test_storescu_sends_pydicom_corpus_unchanged(make_server, db_url, corpus, dcmtk_wire):
    server = make_server(
        database_url=db_url,
        PACSBOX_PERMISSIVE_AES="true",
        PACSBOX_PERMISSIVE_AES_ENABLED="true",
    )
    cfg_dir = server.data_dir.parent
    unchanged = reencoded = 0
    problems: list[str] = []
    for n, round_ in enumerate(corpus):
        profile = storescu_profile(
            cfg_dir / f"r{n}.cfg", {(f.sop_class, f.transfer_syntax) for f in round_}
        )
        result = run_dcmtk(
            ["storescu", *profile, "-v", "-nh", "-aet", "CORPUS", *addr(server)]
            + [str(f.path) for f in round_]
        )
        assert result.returncode == 0, result.stderr
        problems += [f"round {n}: {line}" for line in failed_stores(result)]
        assert len(store_responses(result)) == len(round_), result.stderr
        rows = index_rows(server, [f.sop_instance for f in round_])
        for f in round_:
            if f.sop_instance not in rows:
                problems.append(f"{f.name}: not in the index")
                continue
            indexed_ts, stored = rows[f.sop_instance]
            wire = dcmtk_wire[f.path]
            assert wire.transfer_syntax == f.transfer_syntax, f"{f.name}: DCMTK converted it"
            if indexed_ts != f.transfer_syntax:
                problems.append(f"{f.name}: index says {indexed_ts}, file is {f.transfer_syntax}")
            meta_ts = str(read_file_meta_info(stored).TransferSyntaxUID)
            if meta_ts != f.transfer_syntax:
                problems.append(f"{f.name}: stored meta says {meta_ts}")
            got = dataset_bytes(stored)
            original = dataset_bytes(f.path)
            if wire.dataset == original:
                unchanged += 1
                if got != original:
                    problems.append(f"{f.name}: stored data set differs from the original")
            else:
                reencoded += 1  # DCMTK re-encoded it (see dcmtk_wire): compare with the wire
                if got != wire.dataset:
                    problems.append(f"{f.name}: stored data set differs from what DCMTK sent")
    assert not problems, "\n".join(problems)
    assert unchanged + reencoded == sum(len(r) for r in corpus)
    assert unchanged > reencoded  # sanity: most files travel byte for byte

    # The originals without Study/Series Instance UID are refused with A900 (PS3.4 B.2.3,
    # "Data Set does not match SOP Class") and leave nothing in the index.
    originals = [corpus_file(PYDICOM_TEST_FILES / name) for name in NO_STUDY_UID]
    profile = storescu_profile(
        cfg_dir / "invalid.cfg", {(f.sop_class, f.transfer_syntax) for f in originals}
    )
    result = run_dcmtk(
        ["storescu", *profile, "-v", "-nh", "-aet", "CORPUS", *addr(server)]
        + [str(f.path) for f in originals]
    )
    assert store_responses(result) == ["Error: DataSetDoesNotMatchSOPClass"] * len(originals)
    assert index_rows(server, [f.sop_instance for f in originals]) == {}
    log = wait_for_log(server, "Study Instance UID (0020,000D) is missing")
    assert log.count("A900 Study Instance UID (0020,000D) is missing") == len(originals)


# -- 3. a multi-series study over one association --------------------------------------------
def test_storescu_multi_series_study(make_server, tmp_path):
    server = make_server(PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED="true")
    files = write_study(tmp_path / "study", n_series=3, per_series=5, patient_id="MULTI1")
    ok(run_dcmtk(["storescu", "-R", "-aet", "MODALITY", *addr(server), *map(str, files)]))
    # one association carried all 15 (storescu opens exactly one for a file list)
    log = wait_for_log(server, "calling=MODALITY released, 15 instances stored")
    assert log.count("calling=MODALITY called=PACSBOX accepted") == 1

    archive = open_server_archive(server)
    try:
        p, st, se, i = (m.__table__ for m in (Patient, Study, Series, Instance))
        with archive.engine.connect() as conn:
            patients = conn.execute(
                select(p.c.patient_id, p.c.num_studies, p.c.num_series, p.c.num_instances)
            ).all()
            studies = conn.execute(
                select(st.c.study_instance_uid, st.c.num_series, st.c.num_instances)
            ).all()
            series = conn.execute(
                select(se.c.series_number, se.c.num_instances).order_by(se.c.series_number)
            ).all()
            instances = dict(conn.execute(select(i.c.sop_instance_uid, i.c.file_path)).all())
        assert patients == [("MULTI1", 1, 3, 15)]
        assert len(studies) == 1 and tuple(studies[0][1:]) == (3, 15)
        assert [tuple(r) for r in series] == [(1, 5), (2, 5), (3, 5)]
        assert len(instances) == 15
        for path in files:
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            stored = archive.store.path(instances[uid])
            assert dataset_bytes(stored) == dataset_bytes(path), path.name
    finally:
        archive.engine.dispose()


# -- 4. DICOM TLS -----------------------------------------------------------------------------
@dataclass
class PKI:
    server_key: Path
    server_cert: Path  # self-signed, SAN 127.0.0.1 / localhost
    ca_cert: Path
    client_key: Path
    client_cert: Path  # signed by ca_cert
    rogue_key: Path
    rogue_cert: Path  # self-signed, unknown to the server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = tmp_path_factory.mktemp("pki")
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def issue(
        stem: str,
        cn: str,
        issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
        ca: bool = False,
        usage: x509.ObjectIdentifier | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (name(cn), key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if usage is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(signing_key, hashes.SHA256())
        (folder / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (folder / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert, key

    issue("server", "pacsbox-test-server", usage=ExtendedKeyUsageOID.SERVER_AUTH)
    ca = issue("ca", "pacsbox-test-ca", ca=True)
    issue("client", "modality", issuer=ca, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    issue("rogue", "rogue", usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    f = folder
    return PKI(
        f / "server.key",
        f / "server.crt",
        f / "ca.crt",
        f / "client.key",
        f / "client.crt",
        f / "rogue.key",
        f / "rogue.crt",
    )


def tls_server(make_server, pki: PKI, ca: Path | None = None, **more: str) -> tuple[Server, int]:
    tls_port = free_port()
    extra = dict(
        **more,
        PACSBOX_TLS_CERT=str(pki.server_cert),
        PACSBOX_TLS_KEY=str(pki.server_key),
        PACSBOX_DICOM_TLS_PORT=str(tls_port),
        PACSBOX_PERMISSIVE_AES="true",
        PACSBOX_PERMISSIVE_AES_ENABLED="true",
    )
    if ca is not None:
        extra["PACSBOX_TLS_CA"] = str(ca)
    server = make_server(**extra)
    server.tls_port = tls_port
    assert b"DICOM TLS" in server.log.read_bytes()  # the banner lists the TLS listener
    return server, tls_port


def tls_store(
    server: Server, port: int, tls: list[str], path: Path
) -> subprocess.CompletedProcess[str]:
    # -pw: the key files are not encrypted (only valid with +tls); -to/-ta: give up quickly
    password = ["-pw"] if "+tls" in tls else []
    return run_dcmtk(
        ["storescu", *tls, *password, "-v", "-to", "10", "-ta", "10", "-aet", "TLSCLIENT"]
        + [*addr(server, port), str(path)],
        timeout=60,
    )


def test_storescu_tls(make_server, pki, tmp_path):
    require_tls()
    server, tls_port = tls_server(make_server, pki)
    ds = make_ct(patient_id="TLS1")
    path = tmp_path / "tls.dcm"
    ds.save_as(path, enforce_file_format=True)

    # authenticated TLS, the server's self-signed certificate as trust anchor (-rc default)
    tls = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.server_cert)]
    ok(tls_store(server, tls_port, tls, path))
    rows = index_rows(server, [ds.SOPInstanceUID])
    assert rows[ds.SOPInstanceUID][0] == EXPLICIT_LE
    assert dataset_bytes(rows[ds.SOPInstanceUID][1]) == dataset_bytes(path)
    # anonymous TLS (no client certificate) is fine while tls_ca is not set
    ok(tls_store(server, tls_port, ["+tla", "+cf", str(pki.server_cert)], path))

    # a plain DICOM connection to the TLS port gets nowhere ...
    plain = run_dcmtk(["echoscu", "-to", "10", "-ta", "10", *addr(server, tls_port)], timeout=60)
    assert plain.returncode != 0, plain.stdout + plain.stderr
    wait_for_log(server, "TLS handshake with")
    # ... while the plain port still works, and the TLS port keeps serving
    ok(run_dcmtk(["echoscu", *addr(server)]))
    ok(tls_store(server, tls_port, tls, path))


def test_storescu_mutual_tls(make_server, pki, tmp_path):
    require_tls()
    server, tls_port = tls_server(make_server, pki, ca=pki.ca_cert)
    path = tmp_path / "mtls.dcm"
    ds = make_ct(patient_id="MTLS1")
    ds.save_as(path, enforce_file_format=True)
    trust = ["+cf", str(pki.server_cert)]

    no_cert = tls_store(server, tls_port, ["+tla", *trust], path)
    assert no_cert.returncode != 0 or failed_stores(no_cert), no_cert.stderr
    rogue = tls_store(
        server, tls_port, ["+tls", str(pki.rogue_key), str(pki.rogue_cert), *trust], path
    )
    assert rogue.returncode != 0 or failed_stores(rogue), rogue.stderr
    assert index_rows(server, [ds.SOPInstanceUID]) == {}

    good = ["+tls", str(pki.client_key), str(pki.client_cert), *trust]
    ok(tls_store(server, tls_port, good, path))
    assert ds.SOPInstanceUID in index_rows(server, [ds.SOPInstanceUID])


def test_idle_connections_do_not_block_the_listeners(make_server, pki, tmp_path):
    """Connections that never send anything (no A-ASSOCIATE-RQ, no TLS ClientHello) must not
    stop others from being served; otherwise anyone who can open more TCP connections than
    there are workers shuts the port for acse_timeout."""
    require_tls()
    import socket

    server, tls_port = tls_server(make_server, pki, PACSBOX_ACSE_TIMEOUT="3")
    path = tmp_path / "busy.dcm"
    make_ct(patient_id="BUSY1").save_as(path, enforce_file_format=True)
    tls = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.server_cert)]
    for port, client in (
        (server.port, lambda: run_dcmtk(["storescu", "-aet", "BUSY", *addr(server), str(path)])),
        (tls_port, lambda: tls_store(server, tls_port, tls, path)),
    ):
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # > workers
        try:
            time.sleep(0.3)  # let the workers pick them up
            started = time.monotonic()
            ok(client())
            elapsed = time.monotonic() - started
        finally:
            for s in idle:
                s.close()
        what = "TLS" if port == tls_port else "plain"
        assert elapsed < 2, f"{what} store waited {elapsed:.1f}s behind idle connections"


# -- 5. preferred transfer syntax ---------------------------------------------------------
@pytest.mark.parametrize("preferred", [None, IMPLICIT_LE], ids=["requestor-order", "implicit"])
def test_preferred_transfer_syntax(make_server, tmp_path, preferred):
    extra = dict(PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED="true")
    if preferred:
        extra["PACSBOX_PREFERRED_TRANSFER_SYNTAX"] = preferred
    server = make_server(**extra)
    # +C: one presentation context proposing [first, the other two uncompressed syntaxes];
    # -x= puts Explicit VR LE first, -xb Explicit VR Big Endian (storescu +v shows the lists).
    for option, first in (("-x=", EXPLICIT_LE), ("-xb", EXPLICIT_BE)):
        ds = make_ct(patient_id="PREF1")
        path = tmp_path / f"pref{option}.dcm"
        ds.save_as(path, enforce_file_format=True)
        ok(run_dcmtk(["storescu", "-R", "+C", option, "-aet", "PREF", *addr(server), str(path)]))
        expected = preferred or first
        rows = index_rows(server, [ds.SOPInstanceUID])
        assert rows[ds.SOPInstanceUID][0] == expected, option
        stored = dcmread(rows[ds.SOPInstanceUID][1])
        assert stored.file_meta.TransferSyntaxUID == expected
        pixels = stored.PixelData  # OW: pydicom keeps the raw bytes, big endian ones swapped
        if expected == EXPLICIT_BE:
            pixels = b"".join(
                pixels[i + 1 : i + 2] + pixels[i : i + 1] for i in range(0, len(pixels), 2)
            )
        assert stored.PatientID == "PREF1" and pixels == ds.PixelData
    # The association log line names the accepted context; accept the UID or its name.
    log = wait_for_log(server, "calling=PREF released")
    accepted = re.findall(
        r"calling=PREF called=\S+ accepted 1/1 contexts: "
        r"(?:CT Image Storage|1\.2\.840\.10008\.5\.1\.4\.1\.1\.2)/(.+)",
        log,
    )
    expected_ts = [preferred or EXPLICIT_LE, preferred or EXPLICIT_BE]
    assert [ts_uid(x.strip()) for x in accepted] == expected_ts, accepted


def ts_uid(name_or_uid: str) -> str:
    if re.fullmatch(r"[0-9.]+", name_or_uid):
        return name_or_uid
    return next(uid for uid in map(UID, RECEIVE_TRANSFER_SYNTAXES) if uid.name == name_or_uid)


# -- 6. sendtopacs --------------------------------------------------------------------------
def test_sendtopacs_send(make_server):
    server = make_server(PACSBOX_PERMISSIVE_AES="true", PACSBOX_PERMISSIVE_AES_ENABLED="true")
    names = [
        "CT_small.dcm",  # CT, explicit LE
        "693_J2KI.dcm",  # CT, JPEG 2000: same SOP class, another syntax
        "MR_small_bigendian.dcm",  # MR, explicit BE
        "ExplVR_BigEnd.dcm",  # US, explicit BE; pydicom re-encodes it differently
        "JPEG2000.dcm",  # SC, JPEG 2000
        "SC_rgb_rle.dcm",  # SC, RLE
        "image_dfl.dcm",  # SC, deflated: re-deflating would change the bytes
    ]
    paths = [PYDICOM_TEST_FILES / n for n in names]
    result = subprocess.run(
        [str(VENV_BIN / "sendtopacs"), "send", *map(str, paths)]
        + ["--host", "127.0.0.1", "--port", str(server.port), "--aec", "PACSBOX", "--aet", "X"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(paths)} sent, 0 failed" in result.stdout
    uids = {p: str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    rows = index_rows(server, list(uids.values()))
    for p, uid in uids.items():
        ts, stored = rows[uid]
        assert ts == str(read_file_meta_info(p).TransferSyntaxUID), p.name
        # "send DICOM files as they are" (SPEC S3): the data set arrives byte for byte
        assert dataset_bytes(stored) == dataset_bytes(p), p.name

"""Study share links (SPEC E7; archive/sharing.py, web/share.py) against create_app(archive):
create/list/revoke/expiry on all three databases, privileges, validity arithmetic with a
clock, the public page and images scoped to the shared study, the zip downloads (original
byte for byte; JPEG Lossless SV1 with the same pixels), audit rows, tokens kept out of logs."""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import zipfile
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from pacsbox.archive.audit import AUDIT
from pacsbox.archive.index.writer import INSTANCE, utcnow
from pacsbox.archive.sharing import (
    JPEG_LOSSLESS_SV1,
    SHARE,
    JpegLosslessEncoder,
    ShareError,
    ShareLinks,
    Validity,
    add_months,
    expiry,
    token_hash,
)
from pacsbox.archive.users import UserDirectory
from pacsbox.web.app import create_app
from tests.helpers import PYDICOM_TEST_FILES, write_study

ADMIN = ("boss", "admin-pass-1")
RAD = ("rita", "radio-pass-1")
RAD2 = ("rolf", "radio-pass-2")
VIEWER = ("val", "viewer-pass-1")
TECH = ("tess", "tech-pass-01")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _client(archive, **overrides) -> TestClient:  # noqa: ANN001
    users = UserDirectory(archive.engine)
    users.add(ADMIN[0], "admin", ADMIN[1])
    users.add(RAD[0], "radiologist", RAD[1])
    users.add(RAD2[0], "radiologist", RAD2[1])
    users.add(VIEWER[0], "viewer", VIEWER[1])
    users.add(TECH[0], "technician", TECH[1])
    return TestClient(create_app(archive, archive.settings.model_copy(update=overrides)))


@pytest.fixture
def client(archive) -> Iterator[TestClient]:  # noqa: ANN001 - all three databases
    with _client(archive) as c:
        yield c


@pytest.fixture
def sqlite_client(sqlite_archive) -> Iterator[TestClient]:  # noqa: ANN001
    with _client(sqlite_archive) as c:
        yield c


def upload(c: TestClient, paths: list[Path]) -> str:
    files = [("file", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
    r = c.post("/api/instances", files=files, headers=basic(*ADMIN))
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["study_instance_uid"]


def share(c: TestClient, study: str, who=RAD, **body) -> dict:  # noqa: ANN001
    r = c.post(f"/api/studies/{study}/shares", json=body, headers=basic(*who))
    assert r.status_code == 201, r.text
    return r.json()


def token_of(url: str) -> str:
    return url.rsplit("/share/", 1)[1]


def audit(archive, **where) -> list:  # noqa: ANN001
    stmt = select(AUDIT).order_by(AUDIT.c.id)
    for k, v in where.items():
        stmt = stmt.where(AUDIT.c[k] == v)
    with archive.engine.connect() as conn:
        return conn.execute(stmt).all()


def test_create_list_revoke_expire_on_every_db(client: TestClient, archive, tmp_path) -> None:  # noqa: ANN001
    study = upload(client, write_study(tmp_path / "a", n_series=2, per_series=2))
    other = upload(client, write_study(tmp_path / "b", n_series=1, per_series=1))
    s1 = share(client, study, valid_days=7, note="for Dr. Who")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", s1["token"])
    assert s1["url"] == f"http://testserver/share/{s1['token']}"
    assert (s1["study_instance_uid"], s1["created_by"], s1["active"]) == (study, "rita", True)
    expires = datetime.fromisoformat(s1["expires_at"])
    assert timedelta(days=6, hours=23) < expires - utcnow() <= timedelta(days=7)
    s2 = share(client, other, who=RAD2, valid_months=2)
    until = (utcnow() + timedelta(days=30)).date()
    s3 = share(client, study, who=ADMIN, until=until.isoformat())
    assert s3["expires_at"] == (until + timedelta(days=1)).isoformat() + "T00:00:00"
    assert s3["validity_from"] == "until"

    # only the SHA-256 of the token is stored
    with archive.engine.connect() as conn:
        stored = conn.execute(select(SHARE.c.token_hash).where(SHARE.c.id == s1["id"])).scalar()
    assert stored == token_hash(s1["token"]) and s1["token"] not in str(stored)

    # listing: own links for a radiologist, all for an administrator, never the token
    mine = client.get("/api/shares", headers=basic(*RAD)).json()
    assert [s["id"] for s in mine] == [s1["id"]]
    assert "token" not in mine[0] and mine[0]["patient_id"] == "PAT001"
    assert {s["id"] for s in client.get("/api/shares", headers=basic(*ADMIN)).json()} == {
        s1["id"],
        s2["id"],
        s3["id"],
    }
    by_study = client.get("/api/shares", params={"study_uid": study}, headers=basic(*ADMIN))
    assert {s["id"] for s in by_study.json()} == {s1["id"], s3["id"]}

    # the link works without any login, and counts
    page = client.get(f"/share/{s1['token']}")
    assert page.status_code == 200 and "Doe John" in page.text
    listed = client.get("/api/shares", headers=basic(*RAD)).json()[0]
    assert listed["access_count"] == 1 and listed["last_access_at"]

    # revoke: not someone else's (404), own yes; then the page is the 404 page
    assert client.delete(f"/api/shares/{s1['id']}", headers=basic(*RAD2)).status_code == 404
    r = client.delete(f"/api/shares/{s1['id']}", headers=basic(*RAD))
    assert r.status_code == 200 and r.json()["revoked_by"] == "rita" and not r.json()["active"]
    revoked = client.get(f"/share/{s1['token']}")
    # expired (clock moved past the end): same 404 page
    with archive.engine.begin() as conn:
        conn.execute(
            update(SHARE)
            .where(SHARE.c.id == s2["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    expired = client.get(f"/share/{s2['token']}")
    unknown = client.get("/share/" + "A" * 43)
    malformed = client.get("/share/not-a-token")
    assert {revoked.status_code, expired.status_code, unknown.status_code} == {404}
    assert revoked.text == expired.text == unknown.text == malformed.text
    assert client.get(f"/share/{s2['token']}/archive").status_code == 404
    # the administrator may revoke anyone's link
    assert client.delete(f"/api/shares/{s3['id']}", headers=basic(*ADMIN)).status_code == 200
    active = client.get("/api/shares", params={"active": True}, headers=basic(*ADMIN)).json()
    assert active == []

    # a deleted study: its link answers 404 too
    s4 = share(client, other, who=ADMIN)
    assert client.get(f"/share/{s4['token']}").status_code == 200
    assert client.delete(f"/api/studies/{other}", headers=basic(*ADMIN)).status_code == 200
    assert client.get(f"/share/{s4['token']}").status_code == 404

    # audit: creation and revocation by the users, the page view by the link
    admin_events = audit(archive, action="admin", object=f"share:{s1['id']}")
    assert [e.username for e in admin_events] == ["rita", "rita"]
    views = audit(archive, username=f"share:{s1['id']}")
    assert [(e.action, e.study_uid, e.client) for e in views] == [("read", study, "testclient")]
    denied = audit(archive, username="share:?", outcome="denied")
    assert len(denied) == 1  # once per client per window, not per attempt


def test_privileges_on_every_db(client: TestClient, tmp_path: Path) -> None:
    c = client
    study = upload(c, write_study(tmp_path / "a", 1, 1))
    s = share(c, study)
    for who in (VIEWER, TECH):
        h = basic(*who)
        assert c.post(f"/api/studies/{study}/shares", json={}, headers=h).status_code == 403
        assert c.get("/api/shares", headers=h).status_code == 403
        assert c.delete(f"/api/shares/{s['id']}", headers=h).status_code == 403
    for method, path in (
        ("POST", f"/api/studies/{study}/shares"),
        ("GET", "/api/shares"),
        ("DELETE", f"/api/shares/{s['id']}"),
    ):
        r = c.request(method, path)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    # a session needs the CSRF token to create a link
    r = c.post("/api/login", json={"username": RAD[0], "password": RAD[1]})
    csrf = r.json()["csrf_token"]
    assert c.post(f"/api/studies/{study}/shares", json={}).status_code == 403
    r = c.post(f"/api/studies/{study}/shares", json={}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 201


def test_bad_requests(sqlite_client: TestClient, tmp_path: Path) -> None:
    c = sqlite_client
    study = upload(c, write_study(tmp_path / "a", 1, 1))
    h = basic(*RAD)
    for body in (
        {"valid_days": 0},
        {"valid_days": 5000},
        {"valid_days": 3, "valid_months": 1},
        {"until": "2001-01-01"},
        {"until": "not a date"},
        {"from_study_date_days": 5, "from": "issue"},
        {"from": "tomorrow"},
        {"surprise": 1},
        {"note": "x" * 300},
        {"from_study_date_days": 30},  # the study date 2026-01-01 + 30 d is long past
    ):
        r = c.post(f"/api/studies/{study}/shares", json=body, headers=h)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["status"] == 400
    assert c.post("/api/studies/1.2.3.4/shares", json={}, headers=h).status_code == 404
    # no body at all: the default validity
    r = c.post(f"/api/studies/{study}/shares", headers=h)
    assert r.status_code == 201 and r.json()["validity_from"] == "issue"
    r = c.post(f"/api/studies/{study}/shares", content=b"{oops", headers=h)
    assert r.status_code == 400
    assert c.post("/api/studies/bad..uid/shares", json={}, headers=h).status_code == 400
    assert c.delete("/api/shares/999", headers=h).status_code == 404
    assert c.delete("/api/shares/abc", headers=h).status_code == 400


def test_validity_arithmetic_with_a_clock() -> None:
    now = datetime(2026, 3, 10, 12, 0, 0)

    def exp(v: Validity, study_date: str | None = "20260301", **kw) -> tuple[datetime, str]:  # noqa: ANN003
        opts = {"default_days": 7, "default_origin": "issue", **kw}
        return expiry(v, now=now, study_date=study_date, **opts)

    assert exp(Validity()) == (datetime(2026, 3, 17, 12), "issue")
    assert exp(Validity(days=3)) == (datetime(2026, 3, 13, 12), "issue")
    assert exp(Validity(months=2)) == (datetime(2026, 5, 10, 12), "issue")
    assert exp(Validity(until=date(2026, 4, 1))) == (datetime(2026, 4, 2), "until")
    assert exp(Validity(days=30, origin="study_date")) == (datetime(2026, 3, 31), "study_date")
    # the setting's origin: from the study date; without a study date from now
    assert exp(Validity(days=30), default_origin="study_date")[1] == "study_date"
    assert exp(Validity(days=30), None, default_origin="study_date") == (
        datetime(2026, 4, 9, 12),
        "issue",
    )
    with pytest.raises(ShareError, match="no valid Study Date"):
        exp(Validity(days=30, origin="study_date"), "2026")
    with pytest.raises(ShareError, match="already be expired"):
        exp(Validity(days=5, origin="study_date"))
    with pytest.raises(ShareError, match="in the past"):
        exp(Validity(until=date(2026, 3, 9)))
    assert add_months(datetime(2026, 1, 31), 1) == datetime(2026, 2, 28)
    assert add_months(datetime(2026, 11, 30), 3) == datetime(2027, 2, 28)


def test_expiry_follows_the_clock_on_every_db(archive, tmp_path: Path) -> None:  # noqa: ANN001
    """A link made 8 days ago for 7 days no longer resolves; one for 9 days does."""
    with _client(archive) as c:
        study = upload(c, write_study(tmp_path / "a", 1, 1))
    links = ShareLinks(archive.engine)
    past = utcnow() - timedelta(days=8)
    gone, gone_token = links.create(study, "rita", Validity(days=7), now=past)
    kept, kept_token = links.create(study, "rita", Validity(days=9), now=past)
    assert links.resolve(gone_token) is None
    assert links.resolve(kept_token) is not None and not gone.active() and kept.active()
    # links dead for over a year are purged (at the next creation)
    with archive.engine.begin() as conn:
        conn.execute(
            update(SHARE)
            .where(SHARE.c.id == gone.id)
            .values(expires_at=utcnow() - timedelta(days=366))
        )
    links.create(study, "rita", Validity(days=1))
    assert links.get(gone.id) is None and links.get(kept.id) is not None


def test_setting_default_origin_study_date(sqlite_archive, tmp_path: Path) -> None:  # noqa: ANN001
    with _client(
        sqlite_archive, share_validity_from="study_date", share_default_days=36500 // 10
    ) as c:
        study = upload(c, write_study(tmp_path / "a", 1, 1))  # StudyDate 20260101
        s = share(c, study)
        assert s["validity_from"] == "study_date"
        assert s["expires_at"] == (datetime(2026, 1, 1) + timedelta(days=3650)).isoformat()


def test_page_images_scoped_to_the_study(sqlite_client: TestClient, tmp_path: Path) -> None:
    c = sqlite_client
    paths = write_study(
        tmp_path / "a", n_series=2, per_series=3, patient_name="<b>Evil</b>^Eve", patient_id="P2"
    )
    study = upload(c, paths)
    other_paths = write_study(tmp_path / "b", n_series=1, per_series=1)
    upload(c, other_paths)
    s = share(c, study)
    token = s["token"]
    page = c.get(f"/share/{token}")
    assert page.status_code == 200
    assert "&lt;b&gt;Evil&lt;/b&gt; Eve" in page.text and "<b>Evil" not in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    nonce = re.search(r"'nonce-([^']+)'", csp).group(1)  # type: ignore[union-attr]
    assert page.text.count(f'nonce="{nonce}"') == 3  # style, data, script: nothing else runs
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    assert not re.search(r"(src|href)=\"https?://", page.text)  # no external asset
    assert "/archive?compression=original" in page.text
    assert "/archive?compression=jpeg-lossless" in page.text

    series = c.get(f"/api/studies/{study}/series", headers=basic(*ADMIN)).json()
    se = series[0]["series_instance_uid"]
    inst = c.get(f"/api/series/{se}/instances", headers=basic(*ADMIN)).json()[1]
    thumb = c.get(f"/share/{token}/series/{se}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8"
    base = f"/share/{token}/series/{se}/instances/{inst['sop_instance_uid']}/rendered"
    img = c.get(base)
    assert img.status_code == 200 and img.content[:2] == b"\xff\xd8"
    assert c.get(base, params={"window": "100,200"}).status_code == 200
    assert c.get(base, params={"frame": 2}).status_code == 404
    assert c.get(base, params={"window": "x"}).status_code == 400
    # an instance of another study is not reachable through this link
    other = dcmread(other_paths[0])
    r = c.get(
        f"/share/{token}/series/{other.SeriesInstanceUID}/instances/{other.SOPInstanceUID}/rendered"
    )
    assert r.status_code == 404
    assert c.get(f"/share/{token}/series/{other.SeriesInstanceUID}/thumbnail").status_code == 404
    assert c.get(f"/share/{'B' * 43}/series/{se}/thumbnail").status_code == 404


def _zip(c: TestClient, token: str, compression: str) -> zipfile.ZipFile:
    r = c.get(f"/share/{token}/archive", params={"compression": compression})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    assert compression in r.headers["content-disposition"]
    return zipfile.ZipFile(io.BytesIO(r.content))


MIXED = [
    "CT_small.dcm",  # Explicit VR LE, signed 16 bit
    "MR_small_RLE.dcm",  # RLE Lossless
    "SC_rgb_rle.dcm",  # RLE Lossless, RGB
    "MR_small_jp2klossless.dcm",  # JPEG 2000 Lossless
    "JPEG-lossy.dcm",  # lossy: kept as stored
    "rtdose.dcm",  # 32-bit multi-frame: kept as stored (JPEG Lossless holds <= 16 bits)
    "liver_1frame.dcm",  # 1-bit segmentation: kept (GDCM would abort the process on it)
]


def test_zips_original_and_jpeg_lossless(
    sqlite_client: TestClient,
    sqlite_archive,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    c = sqlite_client
    study = upload(c, write_study(tmp_path / "a", n_series=2, per_series=2))
    # put pydicom's samples into that study (one series each) through the normal upload
    extra = []
    for name in MIXED:
        ds = dcmread(PYDICOM_TEST_FILES / name)
        ds.StudyInstanceUID = study
        ds.PatientID, ds.PatientName = "PAT001", "Doe^John"
        ds.SeriesInstanceUID = generate_uid()  # some samples share their UIDs
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(tmp_path / name)
        extra.append(tmp_path / name)
    assert upload(c, extra) == study
    token = share(c, study)["token"]
    with sqlite_archive.engine.connect() as conn:
        stored = {
            r.sop_instance_uid: (
                Path(sqlite_archive.store.open(r.file_path)).read_bytes(),
                r.transfer_syntax_uid,
            )
            for r in conn.execute(
                select(
                    INSTANCE.c.sop_instance_uid,
                    INSTANCE.c.file_path,
                    INSTANCE.c.transfer_syntax_uid,
                )
            )
        }

    original = _zip(c, token, "original")
    names = [n for n in original.namelist() if n != "DICOMDIR"]
    assert len(names) == 4 + len(MIXED) and "DICOMDIR" in original.namelist()
    seen = set()
    for name in names:
        data = original.read(name)
        sop = dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        assert data == stored[sop][0], name  # byte for byte what the archive holds
        seen.add(sop)
    assert seen == set(stored)

    jpeg = _zip(c, token, "jpeg-lossless")
    folder = tmp_path / "jpeg"
    jpeg.extractall(folder)
    fs = FileSet(folder / "DICOMDIR")  # a valid File-set whose records name the files
    assert len(fs) == len(stored)
    syntaxes = {}
    for instance in fs:
        ds = instance.load()
        sop = ds.SOPInstanceUID
        syntaxes[sop] = ds.file_meta.TransferSyntaxUID
        assert instance.ReferencedTransferSyntaxUIDInFile == syntaxes[sop]
        original_ds = dcmread(io.BytesIO(stored[sop][0]))
        if syntaxes[sop] == JPEG_LOSSLESS_SV1 and stored[sop][1] != JPEG_LOSSLESS_SV1:
            assert np.array_equal(ds.pixel_array, original_ds.pixel_array), sop
            assert ds.SOPInstanceUID == original_ds.SOPInstanceUID
            assert ds.PatientName == original_ds.PatientName
    by_name = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p.name for p in extra}
    converted = {
        by_name.get(s, "generated") for s, ts in syntaxes.items() if ts == JPEG_LOSSLESS_SV1
    }
    assert converted == {
        "generated",
        "CT_small.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb_rle.dcm",
        "MR_small_jp2klossless.dcm",
    }
    kept = {
        by_name[s]: ts for s, ts in syntaxes.items() if s in by_name and ts != JPEG_LOSSLESS_SV1
    }
    assert kept == {
        "JPEG-lossy.dcm": "1.2.840.10008.1.2.4.51",
        "rtdose.dcm": "1.2.840.10008.1.2",  # Implicit VR LE
        "liver_1frame.dcm": "1.2.840.10008.1.2.1",
    }
    for s, ts in syntaxes.items():
        if ts != JPEG_LOSSLESS_SV1:  # kept files are the stored bytes
            name = next(n for n in jpeg.namelist() if n != "DICOMDIR" and _sop(jpeg, n) == s)
            assert jpeg.read(name) == stored[s][0]

    exports = audit(sqlite_archive, action="export")
    assert [e.detail for e in exports] == [
        f"share link zip download (original, {len(stored)} instance(s))",
        f"share link zip download (jpeg-lossless, {len(stored)} instance(s))",
    ]
    assert {e.username for e in exports} == {"share:1"}
    assert c.get(f"/share/{token}/archive", params={"compression": "zip9"}).status_code == 400


def _sop(zf: zipfile.ZipFile, name: str) -> str:
    return str(dcmread(io.BytesIO(zf.read(name)), stop_before_pixels=True).SOPInstanceUID)


def test_token_never_logged(
    sqlite_client: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    c = sqlite_client
    study = upload(c, write_study(tmp_path / "a", 1, 2))
    caplog.set_level(logging.DEBUG)
    s = share(c, study)
    token = s["token"]
    se = c.get(f"/api/studies/{study}/series", headers=basic(*ADMIN)).json()[0]
    assert c.get(f"/share/{token}").status_code == 200
    assert c.get(f"/share/{token}/series/{se['series_instance_uid']}/thumbnail").status_code == 200
    assert c.get(f"/share/{token}/archive").status_code == 200
    c.delete(f"/api/shares/{s['id']}", headers=basic(*RAD))
    assert c.get(f"/share/{token}").status_code == 404
    server = "\n".join(
        f"{r.name} {r.getMessage()}"
        for r in caplog.records
        if not r.name.startswith(("httpx", "httpcore"))
    )
    assert token not in server
    lines = [r.getMessage() for r in caplog.records if r.name == "pacsbox.http"]
    assert any(re.match(r"GET /share/\*\*\* 200 user=share:1 ", m) for m in lines), lines
    assert any(m.startswith("GET /share/***/archive 200") for m in lines), lines
    assert any(m.startswith("GET /share/*** 404") for m in lines), lines
    # nor in the audit log
    with c.app.state.pacs.archive.engine.connect() as conn:  # type: ignore[attr-defined]
        details = " ".join(str(tuple(r)) for r in conn.execute(select(AUDIT)))
    assert token not in details


def _abort(_path: str, _prefix: bytes, _workdir: str) -> bytes | None:
    os.abort()  # what a codec crash in C++ does to its process


def test_codec_crash_costs_one_conversion_not_the_server(tmp_path: Path) -> None:
    """The encoder runs in a helper process: a crash there is a None (file kept as stored),
    the helper is started again for the next file, and this process lives on."""
    source = str(PYDICOM_TEST_FILES / "CT_small.dcm")
    with JpegLosslessEncoder("tests.integration.test_share:_abort") as crashing:
        assert crashing.encode(source, b"", str(tmp_path)) is None
        assert crashing.encode(source, b"", str(tmp_path)) is None  # restarted, crashed again
    with JpegLosslessEncoder() as encoder:
        data = encoder.encode(source, b"", str(tmp_path))
    assert data is not None
    out = dcmread(io.BytesIO(data))
    assert out.file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1
    assert np.array_equal(out.pixel_array, dcmread(source).pixel_array)
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind

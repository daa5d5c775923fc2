#!/usr/bin/env python3
"""Share links and the OTP login (SPEC E6, E7): what a recipient and a HIS/RIS wait for.

In one process (``create_app`` on a fresh SQLite archive, requests through Starlette's
TestClient: no network, so the figures are the server's work), with ``--count`` (default 100)
512×512 CT phantom slices of ``bench/web.py`` (12 bits stored, noise of 10 HU) in one study:

- ``GET /share/{token}`` (the page), ``…/series/{se}/thumbnail`` and ``…/rendered`` of one
  slice: median and p90 of ``--repeat`` (default 30) requests;
- the zip downloads: ``compression=original`` and ``compression=jpeg-lossless`` (JPEG
  Lossless SV1 by GDCM in the helper process): seconds, MB, MB/s of the answer, size ratio;
- ``GET /api/otp`` (an RSA-2048 key pair per call) and ``POST /api/otp/login`` (RSA-OAEP
  decryption + the argon2id password check + a session): median and p90.

Example::

    .venv/bin/python bench/share.py --count 100 --repeat 30
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from web import phantom_ct  # noqa: E402 (sibling bench module)

from pacsbox.app import build_archive  # noqa: E402
from pacsbox.archive.users import UserDirectory  # noqa: E402
from pacsbox.settings import Settings  # noqa: E402
from pacsbox.web.app import create_app  # noqa: E402

USER, PASSWORD = "bench", "bench-password-1"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn, repeat: int) -> list[float]:  # noqa: ANN001
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def report(name: str, ms: list[float]) -> None:
    print(f"{name:<44} median {statistics.median(ms):8.1f} ms   p90 {pct(ms, 0.9):8.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100, help="CT slices in the study")
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    with tempfile.TemporaryDirectory(prefix="bench-share-") as tmp:
        root = Path(tmp)
        settings = Settings(
            data_dir=root / "data",
            bind_address="127.0.0.1",
            dicom_port=0,
            dicom_tls_port=0,
            http_port=0,
            hl7_port=0,
        )
        archive = build_archive(settings)
        UserDirectory(archive.engine).add(USER, "admin", PASSWORD)
        study, series = generate_uid(), generate_uid()
        start = time.perf_counter()
        for i in range(args.count):
            path = root / f"ct{i}.dcm"
            ds = phantom_ct(path, seed=i)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, i + 1
            ds.save_as(path, enforce_file_format=True)
            archive.ingest.store_file(path, source_ae="BENCH")
        print(f"stored {args.count} slices in {time.perf_counter() - start:.1f} s")
        auth = (USER, PASSWORD)
        with TestClient(create_app(archive, settings)) as c:
            link = c.post(f"/api/studies/{study}/shares", json={}, auth=auth).json()
            base = f"/share/{link['token']}"
            sop = c.get(f"/api/series/{series}/instances", auth=auth).json()[0]["sop_instance_uid"]
            report("share page", timed(lambda: c.get(base).raise_for_status(), args.repeat))
            report(
                "series thumbnail",
                timed(
                    lambda: c.get(f"{base}/series/{series}/thumbnail").raise_for_status(),
                    args.repeat,
                ),
            )
            report(
                "rendered slice (JPEG, 512x512)",
                timed(
                    lambda: c.get(
                        f"{base}/series/{series}/instances/{sop}/rendered"
                    ).raise_for_status(),
                    args.repeat,
                ),
            )
            sizes = {}
            for compression in ("original", "jpeg-lossless"):
                start = time.perf_counter()
                r = c.get(f"{base}/archive", params={"compression": compression})
                r.raise_for_status()
                seconds = time.perf_counter() - start
                members = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
                assert len(members) == args.count + 1, len(members)
                sizes[compression] = len(r.content)
                print(
                    f"zip {compression:<14} {seconds:6.2f} s  {len(r.content) / 1e6:7.1f} MB  "
                    f"{len(r.content) / 1e6 / seconds:7.1f} MB/s  "
                    f"{seconds * 1000 / args.count:6.1f} ms/instance"
                )
            ratio = sizes["jpeg-lossless"] / sizes["original"]
            print(f"jpeg-lossless / original size: {ratio:.2f}")

            keys: list[dict] = []
            ms = timed(lambda: keys.append(c.get("/api/otp").json()), min(args.repeat, 10))
            report("GET /api/otp (RSA-2048 key pair)", ms)
            oaep = padding.OAEP(
                mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
            )
            codes = []
            for key in keys:
                public = serialization.load_pem_public_key(key["public_key"].encode())
                text = f"id={USER}&password={PASSWORD}".encode()
                codes.append(base64.b64encode(public.encrypt(text, oaep)).decode())  # type: ignore[union-attr]
            report(
                "POST /api/otp/login (decrypt+argon2+session)",
                timed(
                    lambda: c.post("/api/otp/login", json={"code": codes.pop()}).raise_for_status(),
                    len(codes),
                ),
            )
        archive.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

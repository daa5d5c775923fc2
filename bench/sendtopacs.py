#!/usr/bin/env python3
"""sendtopacs conversion benchmark (SPEC S1): how fast photos and videos become DICOM.

The script

1. generates (once, cached in ``--corpus``) ``--images`` 12-megapixel (4000x3000) JPEG photos
   (baseline, 4:2:0, quality 90, smooth gradients plus noise, about 2-4 MB each), one 1280x720
   25 fps H.264 High MP4 of ``--seconds`` seconds and the same clip as MPEG-4 part 2 AVI;
2. converts the photos with ``Converter`` (JPEG stream encapsulated unchanged into Secondary
   Capture, written to a temporary folder) and reports images/s and MB/s — with the default
   1/8-scale decode check of each stream and without it (``verify_jpeg=False``); as a
   reference it also times what re-encoding would cost (Pillow decode + baseline encode);
3. converts the MP4 (H.264 remuxed, not re-encoded) and the AVI (transcoded to H.264
   High@4.1 with libx264 "veryfast") and reports MB/s of input and frames/s;
4. with ``--monitor-files N`` (default 50): the folder monitor's end-to-end latency (SPEC S6)
   — a ``pacsbox serve`` is started, a watched folder auto-forwards to it, N photos
   (1280x960 JPEG) are written into the folder one every ``--monitor-gap`` seconds, and for
   each the time from the writer closing the file to the C-STORE success (pacsbox answers
   only once the instance is stored and indexed) is taken from the monitor's journal; median
   and p95, with the stability wait (``--stable``, the time a file must stay unchanged before
   it is taken) reported separately. ``--only-monitor`` skips steps 2-3;
5. prints a table and writes ``--json FILE`` when asked.

Each measurement is the median of ``--repeat`` runs. The machine is shared and noisy: compare
ratios, not absolute numbers.

Example::

    .venv/bin/python bench/sendtopacs.py --images 20 --seconds 10 --json /tmp/stp.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_CORPUS = BENCH_DIR / ".corpus" / "sendtopacs"
CORPUS_VERSION = 1


def make_corpus(folder: Path, images: int, seconds: int) -> dict[str, object]:
    import av
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / f"v{CORPUS_VERSION}-{images}-{seconds}.ok"
    photos = [folder / f"photo{i:03d}.jpg" for i in range(images)]
    if not stamp.exists():
        rng = np.random.default_rng(7)
        yy, xx = np.indices((3000, 4000), dtype=np.uint16)
        for i, path in enumerate(photos):
            base = np.stack([(xx // 16 + i) % 256, (yy // 12) % 256, ((xx + yy) // 28) % 256], -1)
            noise = rng.integers(0, 24, size=(3000, 4000, 3), dtype=np.uint16)
            Image.fromarray((base + noise).clip(0, 255).astype(np.uint8)).save(path, quality=90)
        for name, codec, fmt in (("clip.mp4", "libx264", None), ("clip.avi", "mpeg4", "avi")):
            out = av.open(str(folder / name), "w", format=fmt)
            stream = out.add_stream(codec, rate=25)
            stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuv420p"
            if codec == "libx264":
                stream.options = {"profile": "high", "level": "4.1", "preset": "veryfast"}
            else:
                stream.bit_rate = 4_000_000
            vy, vx = np.indices((720, 1280), dtype=np.uint16)
            for f in range(seconds * 25):
                arr = np.stack([(vx + 4 * f) % 256, (vy + 2 * f) % 256, (vx + vy) % 256], -1)
                frame = av.VideoFrame.from_ndarray(arr.astype(np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
            out.close()
        stamp.write_text("ok")
    return {
        "photos": photos,
        "mp4": folder / "clip.mp4",
        "avi": folder / "clip.avi",
        "frames": seconds * 25,
    }


def _median_time(fn, repeat: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict[str, object]:
    from PIL import Image

    from pacsbox.sendtopacs.convert import Converter, ConvertOptions
    from pacsbox.sendtopacs.patient import PatientInfo

    corpus = make_corpus(args.corpus, args.images, args.seconds)
    photos: list[Path] = corpus["photos"]  # type: ignore[assignment]
    photo_bytes = sum(p.stat().st_size for p in photos)
    patient = PatientInfo(patient_id="BENCH", last_name="Bench")
    tmp = Path(tempfile.mkdtemp(prefix="stp-bench-"))
    results: dict[str, object] = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "images": len(photos),
        "image_mb": round(photo_bytes / 1e6, 1),
    }
    try:

        def encapsulate_all(verify: bool = True) -> None:
            conv = Converter(patient, ConvertOptions(verify_jpeg=verify))
            out = tmp / "jpeg"
            for path in photos:
                for item in conv.convert(path):
                    item.save(out)
            shutil.rmtree(out)

        def reencode_all() -> None:
            for path in photos:
                img = Image.open(path)
                img.load()
                img.save(io.BytesIO(), "JPEG", quality=90)

        t = _median_time(encapsulate_all, args.repeat)
        results["jpeg_encapsulate_images_per_s"] = round(len(photos) / t, 1)
        results["jpeg_encapsulate_mb_per_s"] = round(photo_bytes / 1e6 / t, 1)
        t = _median_time(lambda: encapsulate_all(False), args.repeat)
        results["jpeg_encapsulate_no_verify_images_per_s"] = round(len(photos) / t, 1)
        results["jpeg_encapsulate_no_verify_mb_per_s"] = round(photo_bytes / 1e6 / t, 1)
        t = _median_time(reencode_all, max(1, min(args.repeat, 2)))
        results["reference_decode_reencode_images_per_s"] = round(len(photos) / t, 2)

        for key, path in (
            ("h264_remux", corpus["mp4"]),
            ("transcode_mpeg4_to_h264", corpus["avi"]),
        ):
            size = Path(path).stat().st_size  # type: ignore[arg-type]

            def one(path: Path = Path(path)) -> None:  # type: ignore[arg-type]
                Converter(patient, ConvertOptions()).convert(path)[0].save(tmp / "video")

            reps = args.repeat if key == "h264_remux" else 1
            t = _median_time(one, reps)
            results[f"{key}_input_mb"] = round(size / 1e6, 2)
            results[f"{key}_mb_per_s"] = round(size / 1e6 / t, 2)
            results[f"{key}_frames_per_s"] = round(int(corpus["frames"]) / t, 1)  # type: ignore[arg-type]
            results[f"{key}_seconds"] = round(t, 3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def monitor_latency(args: argparse.Namespace) -> dict[str, object]:
    """File close → stored in pacsbox through the folder monitor (see the module docstring)."""
    import os
    import socket
    import subprocess
    import sys

    from PIL import Image

    from pacsbox.sendtopacs.monitor import MonitorSet
    from pacsbox.sendtopacs.settings import Device, Settings

    tmp = Path(tempfile.mkdtemp(prefix="stp-monitor-bench-"))
    port = _free_port()
    data = tmp / "pacs"
    data.mkdir()
    config = tmp / "pacsbox.toml"
    config.write_text("# bench\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSBOX_")}
    env.update(
        PACSBOX_CONFIG=str(config),
        PACSBOX_DATA_DIR=str(data),
        PACSBOX_BIND_ADDRESS="127.0.0.1",
        PACSBOX_DICOM_PORT=str(port),
        PACSBOX_HTTP_PORT="0",
        PACSBOX_HL7_PORT="0",
        PACSBOX_DICOM_TLS_PORT="0",
        PACSBOX_PERMISSIVE_AES="true",
        PACSBOX_PERMISSIVE_AES_ENABLED="true",
    )
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - the child writes it
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("pacsbox")), "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    monitors = None
    try:
        deadline = time.monotonic() + 60
        while True:
            if b"Ready." in (tmp / "serve.log").read_bytes():
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp / "serve.log").read_text()[-2000:])
            time.sleep(0.1)
        watched = tmp / "in"
        watched.mkdir()
        settings = Settings(
            devices=[Device("pacs", "PACSBOX", "127.0.0.1", port, default=True)],
            monitors=[
                {
                    "path": str(watched),
                    "failed_dir": str(tmp / "failed"),
                    "method": "events",
                    "stable_seconds": args.stable,
                    "patient": {"patient_id": "BENCH", "last_name": "Monitor"},
                }
            ],
        )
        monitors = MonitorSet(settings, tmp / "state", tick=0.05)
        monitors.start()
        rng = np.random.default_rng(3)
        photo = io.BytesIO()
        pixels = rng.integers(0, 255, (960, 1280, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(photo, "JPEG", quality=85)
        closed: dict[str, float] = {}
        for i in range(args.monitor_files):
            path = watched / f"photo{i:03d}.jpg"
            with open(path, "wb") as fh:
                fh.write(photo.getvalue())
            closed[str(path)] = time.time()
            time.sleep(args.monitor_gap)
        deadline = time.monotonic() + 120 + args.monitor_files * 2
        while monitors.journal.counts().get("done", 0) < args.monitor_files:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all sent: {monitors.journal.counts()}")
            time.sleep(0.1)
        rows = monitors.journal.recent(args.monitor_files * 2)
        lat = sorted(r["updated"] - closed[r["path"]] for r in rows if r["state"] == "done")
        p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
        return {
            "monitor_files": len(lat),
            "monitor_file_kb": round(len(photo.getvalue()) / 1024),
            "monitor_gap_s": args.monitor_gap,
            "monitor_stable_s": args.stable,
            "monitor_latency_median_s": round(statistics.median(lat), 3),
            "monitor_latency_p95_s": round(p95, 3),
            "monitor_latency_max_s": round(lat[-1], 3),
            "monitor_overhead_median_s": round(statistics.median(lat) - args.stable, 3),
        }
    finally:
        if monitors is not None:
            monitors.stop()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--images", type=int, default=20, help="12-MP JPEGs (default 20)")
    parser.add_argument("--seconds", type=int, default=10, help="video length (default 10)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--monitor-files", type=int, default=50, help="0 = skip the monitor")
    parser.add_argument("--monitor-gap", type=float, default=0.2, help="seconds between files")
    parser.add_argument("--stable", type=float, default=1.0, help="monitor stability wait")
    parser.add_argument("--only-monitor", action="store_true")
    args = parser.parse_args()
    results = {} if args.only_monitor else run(args)
    if args.monitor_files:
        results.update(monitor_latency(args))
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""``make viewer-check``: OHIF Viewer v3 lists and opens a study stored in this server.

A new user's path, end to end on 127.0.0.1: our server with its embedded PostgreSQL and a
throwaway data dir, a generated brain-MR-like study sent with STOW-RS, OHIF's prebuilt
``dist/`` served by a static server with an ``app-config.js`` pointing at our DICOMweb
root, and Debian's Chromium driven headless by ``browse.mjs`` (playwright-core). It
prints every request the viewer made to the server, grouped by route, with its statuses:
which QIDO/WADO calls OHIF makes and which of them fail. See docs/viewer-check.md.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import datetime
import functools
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

VIEWER = Path(__file__).resolve().parent
ROOT = VIEWER.parent
CHROMIUM = "/usr/bin/chromium"
SLICES = 20
SIZE = 256


def say(message: str) -> None:
    print(f"[viewer-check] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- OHIF's prebuilt viewer ---------------------------------------------------------------


def ohif_dist() -> Path:
    """viewer/node_modules/@ohif/app/dist at the version and integrity pinned in package.json.

    `npm ci` cannot install @ohif/app itself: the registry serves the app's tarball but not
    every one of its (build-time only) dependencies at that version, and the prebuilt
    dist/ needs none of them. So npm fetches the one tarball (`npm pack`, through npm's
    cache), it is checked against the pinned sha512, and unpacked where `npm ci` would
    have put it.
    """
    pin: dict[str, str] = json.loads((VIEWER / "package.json").read_text())["ohif"]
    name, version = pin["package"].rsplit("@", 1)
    target = VIEWER / "node_modules" / name
    installed = target / "package.json"
    if installed.exists() and json.loads(installed.read_text()).get("version") == version:
        return target / "dist"
    with tempfile.TemporaryDirectory(prefix="ohif-pack-") as tmp:
        say(f"fetching {pin['package']} with npm pack")
        out = subprocess.run(
            ["npm", "pack", pin["package"], "--pack-destination", tmp, "--json", "--silent"],
            cwd=tmp,
            check=True,
            capture_output=True,
            text=True,
        )
        tarball = Path(tmp) / json.loads(out.stdout)[0]["filename"]
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != pin["integrity"]:
            raise SystemExit(f"{tarball.name}: integrity {digest} is not the pinned {pin['integrity']}")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        with tarfile.open(tarball) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/")]
            for member in members:
                member.name = member.name.removeprefix("package/")
            tar.extractall(target, members=members, filter="data")
    return target / "dist"


class SpaHandler(http.server.SimpleHTTPRequestHandler):
    """Static files; any path that is not a file is index.html (OHIF routes in the browser)."""

    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
    }

    def send_head(self):  # type: ignore[no-untyped-def]
        if not os.path.isfile(self.translate_path(self.path)) and urlsplit(self.path).path != "/":
            self.path = "/index.html"
        return super().send_head()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def static_server(dist: Path, work: Path, port: int, dicomweb_root: str) -> Iterator[str]:
    """Serve a copy of dist/ (symlinks, so it is cheap) with our app-config.js in it."""
    site = work / "ohif"
    shutil.copytree(dist, site, copy_function=os.symlink)
    (site / "app-config.js").unlink()
    config = (VIEWER / "app-config.js").read_text().replace("@DICOMWEB_ROOT@", dicomweb_root)
    (site / "app-config.js").write_text(config)
    handler = functools.partial(SpaHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="ohif-static", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- our server -----------------------------------------------------------------------------


def start_server(work: Path, port: int, origin: str, timeout: float, source: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("S3_")}
    command = [str(source / ".venv/bin/dicomweb-server")]
    env.update(
        DICOMWEB_DATA_DIR=str(work / "data"),
        DICOMWEB_CORS_ORIGINS=origin,
        DICOMWEB_GC_INTERVAL_SECONDS="0",
    )
    with open(work / "server.log", "wb") as log:
        process = subprocess.Popen(
            [*command, "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=source,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; log: {work / 'server.log'}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return process
        time.sleep(0.25)
    stop(process, "server")
    raise RuntimeError(f"the server was not ready within {timeout:.0f} s; log: {work / 'server.log'}")


def stop(process: subprocess.Popen[bytes] | None, what: str, group: bool = False, grace: float = 30) -> None:
    """SIGTERM by PID (or by its own process group), then SIGKILL after the grace period."""
    if process is None or process.poll() is not None:
        return

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, sig)
            else:
                os.kill(process.pid, sig)

    send(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        say(f"{what} (pid {process.pid}) ignored SIGTERM for {grace:.0f} s: SIGKILL")
        send(signal.SIGKILL)
        process.wait(10)


# --- the study --------------------------------------------------------------------------------


def brain_slice(t: float, rng: np.random.Generator) -> np.ndarray:
    """An axial T1-like slice at height t in [-1, 1]: scalp, skull, cortex, white matter, ventricles."""
    y, x = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
    shrink = np.sqrt(max(1e-3, 1 - (0.85 * t) ** 2))
    a, b = 0.70 * shrink, 0.86 * shrink
    r = np.hypot(x / a, y / b)
    theta = np.arctan2(y, x)
    image = np.zeros((SIZE, SIZE))
    image[r < 1.0] = 520  # scalp and fat
    image[(r >= 0.90) & (r < 0.96)] = 90  # skull (dark on T1)
    cortex = 0.88 + 0.015 * np.sin(31 * theta + 5 * t)
    image[r < cortex] = 260  # CSF in the sulci
    folds = (
        0.83 + 0.025 * np.sin(17 * theta + 3 * t) + 0.02 * np.sin(29 * theta - t) + 0.015 * np.sin(7 * theta)
    )
    image[r < folds] = 720  # grey matter
    white = 0.68 + 0.03 * np.sin(13 * theta - 2 * t) + 0.025 * np.sin(23 * theta + t)
    image[r < white] = 1000  # white matter
    if abs(t) < 0.6:  # lateral ventricles, widest mid-brain
        size = 0.6 - abs(t)
        for side in (-1, 1):
            dx = (x - side * 0.08 * shrink) / (0.04 + 0.10 * size)
            dy = (y + 0.05) / (0.18 + 0.28 * size)
            image[np.hypot(dx, dy) < 1] = 150
    image += rng.normal(0, 12, image.shape)
    return np.clip(image, 0, 4095).astype(np.uint16)


def phantom_study() -> list[Dataset]:
    """SLICES axial MR instances, one series, with the tags a viewer lays out and windows by."""
    rng = np.random.default_rng(20240601)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    now = datetime.datetime.now()
    out = []
    for i in range(SLICES):
        z = -47.5 + 5.0 * i
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.SOPClassUID = MRImageStorage
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber = "VC0001"
        ds.Modality = "MR"
        ds.Manufacturer = "dicomweb-server viewer-check"
        ds.InstitutionName = "Synthetic"
        ds.ReferringPhysicianName = "Referrer^Rita"
        ds.StudyDescription = "Brain MRI phantom (viewer check)"
        ds.SeriesDescription = "AX T1 phantom"
        ds.PatientName = "PHANTOM^BRAIN"
        ds.PatientID = "VC-PHANTOM-1"
        ds.PatientBirthDate = "19800101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "BRAIN"
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.MRAcquisitionType = "2D"
        ds.SliceThickness = 5.0
        ds.SpacingBetweenSlices = 5.0
        ds.RepetitionTime = 500.0
        ds.EchoTime = 12.0
        ds.MagneticFieldStrength = 3.0
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-120.0, -120.0, z]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = z
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = SIZE
        ds.PixelSpacing = [0.9375, 0.9375]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = 600
        ds.WindowWidth = 1200
        ds.PixelData = brain_slice(-0.8 + 1.0 * i / (SLICES - 1), rng).tobytes()
        out.append(ds)
    return out


def jpeg_study() -> Dataset:
    """pydicom's JPEG baseline RGB test file, given fresh UIDs and a patient of its own."""
    ds = pydicom.dcmread(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = "PYDICOM^JPEG", "VC-JPEG-1"
    ds.StudyDescription = "JPEG baseline RGB (pydicom test file)"
    ds.StudyDate = datetime.date.today().strftime("%Y%m%d")
    return ds


def access_token(base: str, work: Path) -> str:
    """A token for the development client `make run`'s bootstrap created in the data folder."""
    saved = json.loads((work / "data" / "dev-client.json").read_text())
    response = httpx.post(
        base + "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "dicomweb.read dicomweb.write"},
        auth=(saved["client_id"], saved["client_secret"]),
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def stow(base: str, datasets: list[Dataset], token: str) -> None:
    """POST /dicomweb/studies, multipart/related; type="application/dicom"."""
    boundary = "viewer-check-" + generate_uid().replace(".", "")
    body = io.BytesIO()
    for ds in datasets:
        part = io.BytesIO()
        pydicom.dcmwrite(part, ds, enforce_file_format=True)
        body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        body.write(part.getvalue())
        body.write(b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    response = httpx.post(
        base + "/dicomweb/studies",
        content=body.getvalue(),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
            "Authorization": f"Bearer {token}",
        },
        timeout=60,
    )
    if response.status_code != 200:
        raise RuntimeError(f"STOW answered {response.status_code}: {response.text[:500]}")


# --- the report -----------------------------------------------------------------------------

_UID = re.compile(r"/(studies|series|instances)/[0-9.]+")
_FRAMES = re.compile(r"/frames/[0-9,]+")
_BULK = re.compile(r"/bulk/.*$")
_NAMES = {"studies": "{study}", "series": "{series}", "instances": "{instance}"}


def route(url: str) -> str:
    parts = urlsplit(url)
    path = _UID.sub(lambda m: f"/{m.group(1)}/{_NAMES[m.group(1)]}", parts.path)
    path = _BULK.sub("/bulk/{tag}", _FRAMES.sub("/frames/{n}", path))
    keys = sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True)})
    return path + ("?" + "&".join(keys) if keys else "")


def outcome(entry: dict[str, Any]) -> str:
    if entry.get("failure"):
        return f"failed: {entry['failure']}"
    return str(entry.get("status") or "no response")


def failed(entry: dict[str, Any]) -> bool:
    return bool(entry.get("failure")) or not isinstance(entry.get("status"), int) or entry["status"] >= 400


def summarize(report: dict[str, Any], server: str) -> None:
    """Print the viewer's requests to our server grouped by route, then each failing one."""
    requests: list[dict[str, Any]] = report.get("requests", [])
    prefix = urlsplit(server).path
    groups: dict[tuple[str, str, str], collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    answers: dict[tuple[str, str, str], collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    for entry in requests:
        key = (entry["method"], route(entry["url"]).removeprefix(prefix), str(entry["accept"]))
        groups[key][outcome(entry)] += 1
        got = re.sub(r";\s*boundary=[^;]*", "", entry.get("contentType") or "")
        if entry.get("partHeaders"):
            got += " | first part: " + "; ".join(entry["partHeaders"])
        answers[key][got] += 1
    say(f"OHIF made {len(requests)} requests to the server, by route (query keys only) and Accept:")
    for (method, path, accept), counts in sorted(groups.items(), key=lambda kv: kv[0][1]):
        statuses = ", ".join(f"{status} x{n}" for status, n in sorted(counts.items()))
        print(f"  {method:4} {path}\n         Accept: {accept}\n         -> {statuses}")
        for got in answers[(method, path, accept)]:
            if got:
                print(f"            {got}")
    bad = [entry for entry in requests if failed(entry)]
    if bad:
        say(f"{len(bad)} of them failed (4xx/5xx or no response):")
        lines = dict.fromkeys(
            f"  {e['method']} {e['url']}  Accept: {e['accept']}  -> {outcome(e)}  [{e['page']}]" for e in bad
        )
        print("\n".join(lines))
    errors: list[dict[str, str]] = report.get("consoleErrors", [])
    if any("blocked by CORS policy" in error["text"] for error in errors):
        say("CORS: the browser refused the answers (no Access-Control-Allow-Origin for OHIF's origin)")
    if errors:
        say(f"{len(errors)} console errors in the page (first 15):")
        for error in errors[:15]:
            print(f"  [{error['page']}] {error['text'][:300]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--screenshot",
        type=Path,
        default=VIEWER / "out" / "viewer-check.png",
        help="where the screenshot goes on success (make viewer-check-docs: docs/viewer-check.png)",
    )
    parser.add_argument("--timeout", type=float, default=90, help="seconds for each page to show its study")
    parser.add_argument("--source", type=Path, default=ROOT, help="serve another checkout (its own .venv)")
    parser.add_argument(
        "--without-cors",
        action="store_true",
        help="Chromium with --disable-web-security: look past a server that sends no CORS headers",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, report, screenshots)")
    args = parser.parse_args()
    # A SIGTERM (make interrupted, a CI timeout) still runs the finally below that stops everything.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"{CHROMIUM} is missing: apt-get install chromium (make viewer-check does)")
    if not (VIEWER / "node_modules" / "playwright-core").is_dir():
        raise SystemExit("viewer/node_modules is missing: cd viewer && npm ci (make viewer-check does)")
    dist = ohif_dist()
    work = Path(tempfile.mkdtemp(prefix="viewer-check-"))
    server_port, ohif_port = free_port(), free_port()
    origin = f"http://127.0.0.1:{ohif_port}"
    base = f"http://127.0.0.1:{server_port}"
    server = browser = None
    ok = False
    try:
        say(f"starting the server on {base} (embedded PostgreSQL, data in {work / 'data'})")
        server = start_server(work, server_port, origin, timeout=120, source=args.source.resolve())
        token = access_token(base, work)
        mr, jpeg = phantom_study(), jpeg_study()
        stow(base, mr, token)
        stow(base, [jpeg], token)
        say(f"stored {len(mr)} MR instances (study {mr[0].StudyInstanceUID}) and 1 JPEG baseline instance")
        with static_server(dist, work, ohif_port, base + "/dicomweb") as ohif:
            say(f"OHIF {json.loads((dist.parent / 'package.json').read_text())['version']} served at {ohif}")
            args.screenshot.parent.mkdir(parents=True, exist_ok=True)
            shot = work / "viewer-mr.png"
            job = {
                "chromium": CHROMIUM,
                "ohif": ohif,
                "server": base,
                "timeoutMs": int(args.timeout * 1000),
                "report": str(work / "report.json"),
                "listScreenshot": str(work / "study-list.png"),
                "phase": "start",
                "disableWebSecurity": args.without_cors,
                "token": token,
                "studies": [
                    {
                        "label": "MR phantom",
                        "uid": mr[0].StudyInstanceUID,
                        "listText": "PHANTOM",
                        "required": True,
                        "screenshot": str(shot),
                    },
                    {
                        "label": "JPEG baseline",
                        "uid": jpeg.StudyInstanceUID,
                        "listText": "PYDICOM",
                        "required": False,
                        "screenshot": str(work / "viewer-jpeg.png"),
                    },
                ],
            }
            browser = subprocess.Popen(
                ["node", str(VIEWER / "browse.mjs"), json.dumps(job)], cwd=VIEWER, start_new_session=True
            )
            try:
                browser.wait(timeout=args.timeout * 4 + 120)
            except subprocess.TimeoutExpired:
                say("the browser driver took too long: stopping it")
            stop(browser, "browser driver", group=True, grace=10)
        report = json.loads((work / "report.json").read_text()) if (work / "report.json").exists() else {}
        summarize(report, base)
        if report.get("fatal"):
            say(f"FAILED: {report['fatal']}")
        list_ok = bool(report.get("list", {}) and report["list"].get("ok"))
        studies = report.get("studies", [])
        for study in studies:
            state = f"image drawn in {study['seconds']} s" if study["ok"] else f"FAILED: {study['error']}"
            say(f"viewer, {study['label']}{'' if study['required'] else ' (informative)'}: {state}")
        required = [study for study in studies if study["required"]]
        ok = list_ok and bool(required) and all(study["ok"] for study in required)
        server_errors = [e for e in report.get("requests", []) if (e.get("status") or 0) >= 500]
        if server_errors:
            say(f"FAILED: the server answered {len(server_errors)} of the viewer's requests with a 5xx")
            ok = False
        if ok:
            shutil.copyfile(shot, args.screenshot)
            say(f"screenshot: {args.screenshot}")
        return 0 if ok else 1
    finally:
        stop(browser, "browser driver", group=True, grace=10)
        stop(server, "server")
        elapsed = time.monotonic() - started
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            say(f"PASSED in {elapsed:.0f} s")
        else:
            verdict = "PASSED" if ok else "FAILED"
            say(f"{verdict} in {elapsed:.0f} s; logs, report.json and screenshots are in {work}")


if __name__ == "__main__":
    sys.exit(main())

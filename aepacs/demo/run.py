"""``aepacs demo``: the servers, the three parts and the report (see :mod:`aepacs.demo`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import DATA_ROOT
from tqdm import tqdm

import aepacs
from aepacs.config import DEFAULT_CONFIG_PATH, load_config
from aepacs.crypto.keyring import Keyring
from aepacs.crypto.recipients import RecipientKey
from aepacs.demo.browser import screenshot
from aepacs.demo.compare import ModalityResult, _compare, _summary
from aepacs.demo.report import draw_slice, print_table
from aepacs.demo.web import WebPart, print_web_table, run_web_part
from aepacs.errors import AepacsError
from aepacs.models.registry import SHIPPED, Registry
from aepacs.net.client import query, retrieve
from aepacs.net.send import Storable, send_files, storables
from aepacs.pipeline.archive import Archive
from aepacs.store.index import Index
from aepacs.store.recipients import RecipientRows

SHARED_CT = Path(aepacs.__file__).resolve().parents[2] / "shared" / "data" / "ct"

AET, CALLING = "AEPACS", "AEPACSDEMO"
#: The recipient the demo's retrievals are sealed to (its key pair in the demo's home, under reader/).
READER = "demo-reader"

REPORT_HOME = Path("~/.aepacs/demo")

def sample_dirs() -> list[Path]:
    """The bundled sample data that is present on this machine."""
    dirs = [Path(DATA_ROOT) / "test_files"]
    try:
        import data_store  # noqa: PLC0415 -- the pydicom-data package, when installed

        dirs.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    if SHARED_CT.is_dir():
        dirs.append(SHARED_CT)
    return dirs

def sample_instances(sources: list[Path]) -> tuple[list[Storable], int]:
    """Every file under `sources` that a C-STORE can send, one per SOP Instance UID.

    The sample sets hold variants of one image under one SOP Instance UID
    (other transfer syntaxes); an archive keeps the first it receives, so the
    demo sends the first only. Returns the files and how many were left out so.
    """
    first: dict[str, Storable] = {}
    sendable, _ = storables(sources)
    for f in sendable:
        first.setdefault(f.sop_uid, f)
    return list(first.values()), len(sendable) - len(first)

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0

class Server:
    """``aepacs serve`` in its own process on a free loopback port, stopped with SIGTERM."""

    def __init__(self, home: Path, config_file: Path | None) -> None:
        self.home, self.port = home, free_port()
        env = {k: v for k, v in os.environ.items() if k != "AEPACS_KEYRING_PASSPHRASE"}  # its own keyring
        env.update(AEPACS_HOME=str(home), AEPACS_CONFIG=str(config_file or ""))
        self.log = home / "serve.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "aepacs", "serve", "--port", str(self.port)],
                                     env=env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not _listening(self.port):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AepacsError(f"aepacs serve did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM; the exit status (0: stopped cleanly, everything acknowledged archived)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(300)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

def _archived(port: int, uids: list[str]) -> list[pydicom.Dataset]:
    """The instances among `uids` that the archive finds (C-FIND, IMAGE level, UID-list matching)."""
    if not uids:
        return []
    return query("127.0.0.1", port, AET, CALLING, "IMAGE",
                 {"SOPInstanceUID": "\\".join(uids), "SeriesInstanceUID": ""})

def _name(path: Path) -> str:
    """A sample file's name as the report shows it: its directory too (names repeat across the sample sets)."""
    return f"{path.parent.name}/{path.name}"

def _by_modality(files: list[Storable]) -> dict[str, list[Storable]]:
    groups: dict[str, list[Storable]] = defaultdict(list)
    for f in files:
        groups[f.modality or "(none)"].append(f)
    return dict(sorted(groups.items()))

def _reader(home: Path, config_file: Path | None) -> RecipientKey:
    """The demo's reading site: its own X25519 key pair (``reader/`` in `home`), registered at the archive as
    recipient ``demo-reader`` for the AE title it retrieves as, so that what it retrieves is sealed to it
    and opened with its key, never with the archive's keyring."""
    path = home / "reader" / f"{READER}.key.json"
    if not path.exists():
        RecipientKey.generate(READER).save(path)
    key = RecipientKey.load(path)
    cfg = dataclasses.replace(load_config(config_file or DEFAULT_CONFIG_PATH), data_dir=home.resolve())
    index = Index(cfg.index_url)
    try:
        rows = RecipientRows(index)
        if rows.named(READER) is None:
            rows.add(READER, key.id, key.public.public_key, aet=CALLING)
    finally:
        index.close()
    return key


def run_part(home: Path, config_file: Path | None, files: list[Storable], keyring: Keyring,
             lossy: bool) -> dict[str, ModalityResult]:
    """Start a server in `home`, send `files`, find and retrieve them, compare; stop the server."""
    results: dict[str, ModalityResult] = {}
    out = home / "retrieved"
    reader = _reader(home, config_file)
    server = Server(home, config_file)
    try:
        groups = _by_modality(files)
        progress = tqdm(groups.items(), desc="send, find, retrieve", unit="modality", leave=False,
                        disable=not sys.stderr.isatty())
        for modality, group in progress:
            progress.set_postfix_str(f"{modality} ({len(group)})")
            r = results[modality] = ModalityResult(sent=len(group))
            mine = {f.sop_uid: f for f in group}
            t0 = time.perf_counter()
            sent = send_files("127.0.0.1", server.port, AET, CALLING, group)
            stored = set(sent.stored)
            acked = [f.sop_uid for f in group if f.path in stored]
            r.refused = {_name(p): "no response" if s is None else f"0x{s:04X}"
                         for p, s in sent.statuses.items() if p not in stored}
            r.refused.update({_name(f.path): "not sent (no presentation context)" for f in group
                              if f.path not in sent.statuses})
            r.acked = len(acked)
            while len(found := _archived(server.port, acked)) < r.acked and time.perf_counter() - t0 < 1200:
                time.sleep(0.1)  # acknowledged from the spool; findable once archived
            r.ingest_s, r.found = time.perf_counter() - t0, len(found)
            t0 = time.perf_counter()
            for series in sorted({str(d.SeriesInstanceUID) for d in found}):
                got = retrieve("127.0.0.1", server.port, AET, CALLING, "series", series, reader,
                               out / modality.strip("()"))  # sealed to the reader: its own key opens them
                for path in got.written:  # a sample series may hold other modalities' instances too
                    _compare(r, path, mine, lossy)
            r.retrieve_s = time.perf_counter() - t0
        studies = query("127.0.0.1", server.port, AET, CALLING, "STUDY",
                        {"StudyInstanceUID": "", "PatientID": "", "NumberOfStudyRelatedInstances": ""})
        print(f"C-FIND, Study Root, STUDY level, universal match: {len(studies)} studies of "
              f"{len({str(d.get('PatientID', '')) for d in studies})} patients, "
              f"{sum(int(d.get('NumberOfStudyRelatedInstances', 0) or 0) for d in studies)} instances")
    finally:
        status = server.stop()
    if status != 0:
        raise AepacsError(f"aepacs serve exited with status {status}; see {server.log}")
    cfg = dataclasses.replace(load_config(config_file or DEFAULT_CONFIG_PATH), data_dir=home.resolve())
    with Archive(cfg, keyring) as archive:
        for row in archive.index.find():
            counted = results.get(row.modality or "(none)")
            if counted is not None:
                counted.original_bytes += row.source_size
                counted.stored_bytes += row.blob_size
    return results

def lossy_config(path: Path) -> dict[str, tuple[str, int]]:
    """Write the part-two configuration: each shipped model's modalities to it, lossy at its default gain.

    Returns modality -> (model name, its default gain).
    """
    registry = Registry(SHIPPED)
    models: dict[str, tuple[str, int]] = {}
    for name in sorted({n for n, _, _ in registry.entries()}):
        model = registry.load(name)
        if model.arch == "wavelet":
            models.update({m: (name, int(model.manifest["default_gain"])) for m in model.manifest.get("modality", [])})
    routes = {"default": "lossless", **{m: f"{name}:lossy" for m, (name, _) in models.items()}}
    path.write_text(json.dumps({"routes": routes}, indent=2) + "\n")  # JSON is YAML
    return models

def run_demo(*, data: list[Path] | None = None, keep: bool = False, home: Path | None = None,
             learned: bool = True, viewer: Path | None = None) -> int:
    """Run the demo and print its report; return 0 when everything came back as it should.

    `viewer`: the installed OHIF viewer (``aepacs viewer install``), served by part three and
    pictured; `keep`: keep the archive, and part three's server up until Ctrl-C.
    """
    # the sample sets hold deliberately odd files: pydicom remarks on them at every read
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font-cache line is not the demo's news
    warnings.filterwarnings("ignore", module="pydicom")
    temporary = home is None
    home = Path(home) if home else Path(tempfile.mkdtemp(prefix="aepacs-demo-"))
    if home.exists() and any(home.iterdir()) and not (home / "keyring.json").exists():
        print(f"aepacs demo: {home} is not empty; choose a fresh --home")
        return 2
    report_dir = home if not temporary else REPORT_HOME.expanduser()
    report_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    sources = data or sample_dirs()
    print(f"aepacs demo: data directory {home}")
    print("sources: " + ", ".join(str(s) for s in sources))
    files, repeats = sample_instances(sources)
    print(f"{len(files)} instances to send ({repeats} more files repeat a SOP Instance UID and are left out)")
    if viewer is not None and not (viewer / "index.html").is_file():
        print(f"the OHIF viewer is not installed in {viewer} (aepacs viewer install, or make viewer): "
              "part three runs without it")
        viewer = None
    web: WebPart | None = None
    try:
        ok, report, web = _run(home, files, learned, viewer)
        png, why = None, "no image was coded lossy"
        ct = [i for i in report.get("images", []) if i["modality"] == "CT"] or report.get("images", [])
        if ct:  # the largest slice there is (the 16 x 16 samples blown up into blocks show nothing)
            largest = max(i["rows"] * i["columns"] for i in ct)
            biggest = [i for i in ct if i["rows"] * i["columns"] == largest]
            png = draw_slice(biggest[len(biggest) // 2], report_dir / "demo-slice.png")
            why = "matplotlib is not installed: pip install 'aepacs[eval]'"
        for image in report.get("images", []):
            image.pop("retrieved")  # a file of the demo's own (temporary) home
        print()
        print(f"original / decoded / difference of one slice: {png}" if png is not None
              else f"no slice picture ({why})")
        if web.viewer_url and viewer is not None:
            shot, why = screenshot(web.root.removesuffix("/dicomweb"), web.token, web.viewer_url,
                                   report_dir / "demo-viewer.png")
            report["viewer"] = {"url": web.viewer_url, "screenshot": str(shot) if shot else None, "note": why}
            print(f"the CT study in the OHIF viewer: {web.viewer_url}")
            print(f"  screenshot: {shot}" + (f" ({why})" if why else "") if shot else f"  no screenshot ({why})")
        elif web.viewer_url:
            print(f"the CT study over DICOMweb: {web.root}/studies/{web.study} (no viewer installed)")
        (report_dir / "demo.json").write_text(json.dumps(report, indent=1) + "\n")
        print(f"figures per image: {report_dir / 'demo.json'}")
        logs = {name: path for name, path in (("serve.log", home / "serve.log"),
                                              ("serve-learned.log", home / "learned" / "serve.log"),
                                              ("serve-web.log", home / "web" / "serve.log")) if path.exists()}
        for name, log_file in logs.items():  # the refusals' reasons, kept beside the report (the home may go)
            if (report_dir / name).resolve() != log_file.resolve():
                shutil.copy2(log_file, report_dir / name)
        if logs:
            print("the servers' logs (each refusal with its reason): " + ", ".join(str(report_dir / n) for n in logs))
        done = "every instance came back: identical over the lossless routes" + (
            ", a marked derived image at the measured quality over the learned ones" if learned else "")
        print("RESULT: " + (done if ok else "MISMATCH — see above"))
        if keep and web.server is not None:
            _serve_until_interrupted(web, viewer is not None)
        return 0 if ok else 1
    finally:
        if web is not None and web.stop() != 0:
            print(f"aepacs serve (part three) did not stop cleanly; see {home / 'web' / 'serve.log'}")
        if temporary and not keep:
            shutil.rmtree(home, ignore_errors=True)
        elif temporary:
            print(f"archive kept in {home}")

def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _serve_until_interrupted(web: WebPart, viewer: bool) -> None:
    # Ctrl-C or a SIGTERM ends it, even where the demo was started with SIGINT ignored (from a
    # non-interactive shell's background job, as nohup ... & does)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupted)
    base = web.root.removesuffix("/dicomweb")
    print(f"\nthe archive of part three stays up until Ctrl-C: DICOMweb at {web.root}")
    if viewer:
        print(f"  the viewer: sign in at {base}/viewer/login with the token {web.token}, then open")
        print(f"  {web.viewer_url}")
    else:
        print(f"  bearer token: {web.token}")
    try:
        while web.server.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        print()


def _run(home: Path, files: list[Storable], learned: bool,
         viewer: Path | None) -> tuple[bool, dict[str, Any], WebPart]:
    keyring = Keyring.create(home / "keyring.json") if not (home / "keyring.json").exists() \
        else Keyring.load(home / "keyring.json")
    report: dict[str, Any] = {"instances": len(files)}

    print("\npart one: embedded defaults (aepacs serve, lossless routes: the shipped models' lossless mode "
          "for CT, MR and US; JPEG-LS, else zstd, for the rest)")
    print(f"(retrieved by C-GET as {CALLING}, registered recipient {READER}: each object comes sealed to its "
          "X25519 key and is opened with that key alone, not with the archive's keyring)")
    part1 = run_part(home, None, files, keyring, lossy=False)
    report["lossless"] = {m: _summary(r) for m, r in part1.items()}
    print_table(part1, lossy=False)
    ok = all(r.exact == r.acked == r.found == r.retrieved for r in part1.values()) and bool(part1)
    refused = {name: status for r in part1.values() for name, status in r.refused.items()}
    if refused:
        print(f"{len(refused)} instances refused by the archive with a failure status, nothing of them stored "
              f"(malformed samples; each reason is in the server's log, copied beside the report):")
        print(textwrap.fill(", ".join(f"{name} {status}" for name, status in sorted(refused.items())),
                            width=100, initial_indent="  ", subsequent_indent="  "))
    if learned:
        ok = _learned_part(home, files, keyring, report) and ok
    web_home = home / "web"
    web_home.mkdir(exist_ok=True, mode=0o700)
    shutil.copy2(home / "keyring.json", web_home / "keyring.json")
    print("\npart three: DICOMweb (STOW-RS the same files, QIDO-RS until each is queryable, WADO-RS each series "
          "back,\ndecoded by the archive: server.retrieve_as: decoded" + (", the OHIF viewer at /viewer/)"
                                                                            if viewer else ")"))
    groups = _by_modality(files)
    with tqdm(total=len(groups), desc="STOW, QIDO, WADO", unit="modality", leave=False,
              disable=not sys.stderr.isatty()) as progress:

        def step(text: str) -> None:
            progress.set_postfix_str(text)
            progress.update()

        web = run_web_part(web_home, keyring, viewer, free_port(), Server, groups, progress=step)
    report["dicomweb"] = web.summary()
    print_web_table(web)
    refused = {name: reason for r in web.results.values() for name, reason in r.refused.items()}
    if refused:
        print(f"{len(refused)} instances refused by STOW-RS, nothing of them stored (each reason is in the "
              "server's log, copied beside the report):")
        print(textwrap.fill(", ".join(f"{name} {status}" for name, status in sorted(refused.items())),
                            width=100, initial_indent="  ", subsequent_indent="  "))
    ok = ok and all(r.exact == r.acked == r.found == r.retrieved for r in web.results.values())
    return ok, report, web


def _learned_part(home: Path, files: list[Storable], keyring: Keyring, report: dict[str, Any]) -> bool:
    """Part two: each shipped model's modality, lossy; True when every instance came back as it should."""
    lossy_home = home / "learned"
    lossy_home.mkdir(exist_ok=True, mode=0o700)
    shutil.copy2(home / "keyring.json", lossy_home / "keyring.json")
    models = lossy_config(lossy_home / "learned.yaml")
    images = [f for f in files if f.modality in models]
    print("\npart two: learned lossy routes, each shipped model at its default gain: "
          + ", ".join(f"{m} -> {name} gain {g}" for m, (name, g) in models.items()))
    part2 = run_part(lossy_home, lossy_home / "learned.yaml", images, keyring, lossy=True)
    report["learned"] = {m: _summary(r) for m, r in part2.items()}
    report["images"] = [i for r in part2.values() for i in r.images]
    report["gains"] = {m: g for m, (_, g) in models.items()}
    print_table(part2, lossy=True)
    print("ratio: original bytes / bytes stored (header and encryption included); image: the codec's pixel "
          "ratio\n(Lossy Image Compression Ratio); PSNR and SSIM: mean over the derived frames against the "
          "originals.\nInstances not 'derived' came back exact: compressed as received (the learned codecs take "
          "native\npixels), or below the route's quality floor.")
    for modality, r in part2.items():
        if r.images:
            name, gain = models[modality]
            print(f"  the same figures from aepacs eval: aepacs eval --model {name} --gains {gain} "
                  f"--data <these {modality} images> -o REPORT")
    return all(r.derived + r.exact == r.acked == r.retrieved for r in part2.values()) \
        and any(r.derived for r in part2.values())

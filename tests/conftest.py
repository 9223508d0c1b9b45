"""Shared fixtures: an isolated data directory, its keyring and archive, and the real test corpus."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from aepacs.config import Config, load_config
from aepacs.crypto.keyring import Keyring
from aepacs.pipeline.archive import Archive

ROOT = Path(__file__).resolve().parents[1]
SHARED_CT = ROOT.parent / "shared" / "data" / "ct" / "lung-pet-ct-dx-A0001"


def corpus_dirs() -> list[Path]:
    """pydicom's own test files and the pydicom-data package, read from disk (never downloaded)."""
    import data_store
    from pydicom.data import DATA_ROOT

    return [Path(DATA_ROOT) / "test_files", Path(data_store.__file__).parent / "data"]


def _readable(path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pydicom.dcmread(path, stop_before_pixels=True)
        return True
    except Exception:
        return False


_CORPUS: list[Path] | None = None


def corpus_files() -> list[Path]:
    """Every file of the corpus that pydicom can read."""
    global _CORPUS
    if _CORPUS is None:
        files = [p for d in corpus_dirs() for p in sorted(d.rglob("*")) if p.is_file()]
        _CORPUS = [p for p in files if _readable(p)]
    return _CORPUS


_FALLBACK_CT: list[Path] | None = None


def ct_files() -> list[Path]:
    """One real CT series: ../shared/data/ct when present (as in CI).

    Elsewhere, pydicom's real CT_small slice saved as a 40-instance series
    with fresh SOP Instance UIDs.
    """
    global _FALLBACK_CT
    series = SHARED_CT / "series-2-5mm"
    if series.is_dir():
        return sorted(series.glob("*.dcm"))
    if _FALLBACK_CT is None:
        import getpass
        import tempfile

        from pydicom.data import get_testdata_file
        from pydicom.uid import generate_uid

        # under pytest's own tree (pytest-of-USER), with the other tests' files: not among what a test's scan
        # of the system temp directory counts as another program's (tests/net/test_blind.py)
        pytest_root = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
        pytest_root.mkdir(mode=0o700, exist_ok=True)
        out = Path(tempfile.mkdtemp(prefix="aepacs-ct-", dir=pytest_root))
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID = generate_uid()
        for i in range(40):
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = i + 1
            ds.save_as(out / f"ct-{i:03d}.dcm", enforce_file_format=True)
        _FALLBACK_CT = sorted(out.glob("*.dcm"))
    return _FALLBACK_CT


#: Where an archive keeps its index and blobs: the embedded defaults (SQLite, local files), or the
#: engines several nodes share (a real PostgreSQL cluster and S3-protocol server, started for the session)
BACKENDS = ("local", "postgresql+s3")


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The backend of :func:`home`'s archive: ``local`` unless a test or conftest parametrises it over
    :data:`BACKENDS` (``tests/net`` and the rekey tests run on both)."""
    return str(getattr(request, "param", "local"))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, request: pytest.FixtureRequest) -> Path:
    """An empty data directory that AEPACS_HOME points at.

    AEPACS_CONFIG names the tests' site configuration (:func:`backend_site`; servers,
    CLIs and rekey workers the test starts read it too): on ``postgresql+s3`` with
    a new PostgreSQL database as the index and a new S3 bucket as the blob store;
    the spool, keyring and audit trail stay in the data directory, as on a node.
    """
    home = tmp_path / "home"
    monkeypatch.setenv("AEPACS_HOME", str(home))
    for var in ("AEPACS_CONFIG", "AEPACS_KEYRING_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AEPACS_CONFIG", str(backend_site(backend, tmp_path, request)))
    return home


#: What every test archive allows besides its backend: sealed objects for readers that are no registered
#: recipient, under the archive's key (the tests read them with the archive's keyring; the refusal the
#: embedded default makes is tested where recipients are, tests/net/test_recipients.py and the demo).
TEST_SITE = "transport:\n  unregistered: keyring\n"


def backend_site(backend: str, directory: Path, request: pytest.FixtureRequest) -> Path:
    """The site configuration of the tests' archives on `backend` (written in `directory`): :data:`TEST_SITE`,
    and for ``postgresql+s3`` a new PostgreSQL database as the index and a new S3 bucket as the blob store."""
    site = directory / "backend.yaml"
    if backend == "local":
        site.write_text(TEST_SITE)
        return site
    assert backend == "postgresql+s3", backend
    pg, s3 = request.getfixturevalue("postgres_server"), request.getfixturevalue("s3_server")
    site.write_text(TEST_SITE + f"index:\n  url: {pg.database()}\nstore:\n  path: {s3.bucket()}\n"
                    f"  endpoint_url: {s3.endpoint}\n")
    return site


@pytest.fixture
def config(home: Path) -> Config:
    return load_config()


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    """Environment for ``aepacs`` subprocesses (laid over ``os.environ``): :func:`home` as the data directory."""
    return {"AEPACS_HOME": str(home)}


@pytest.fixture
def keyring(config: Config) -> Keyring:
    return Keyring.create(config.keyring_path)


@pytest.fixture
def archive(config: Config, keyring: Keyring) -> Archive:
    with Archive(config, keyring) as a:
        yield a


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = False,
            **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run the real ``aepacs`` command in a child process."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "aepacs", *args], capture_output=True, text=True,
                          env=full_env, **kwargs)  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(f"aepacs {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def postgres_server():  # type: ignore[no-untyped-def]
    """A real PostgreSQL cluster on loopback for the session (:mod:`tests.postgres`)."""
    from tests.postgres import start_postgres

    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server():  # type: ignore[no-untyped-def]
    """A real S3-protocol server (moto) on loopback for the session (:mod:`tests.s3`)."""
    from tests.s3 import S3

    server = S3()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_index_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Fresh, empty index databases (each call another) on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        counter = itertools.count()
        return lambda: f"sqlite:///{tmp_path}/i{next(counter)}.sqlite3"
    server = request.getfixturevalue("postgres_server")
    return server.database  # type: ignore[no-any-return]


#: `make viewer` (CI's install step) puts the OHIF viewer here
VIEWER = Path(__file__).resolve().parents[1] / "build" / "viewer"
#: where screenshots are kept after the run (test artefacts)
ARTEFACTS = Path(__file__).resolve().parents[1] / "build" / "artefacts"


@pytest.fixture(scope="session")
def viewer_dir() -> Path:
    """The installed OHIF viewer (installed from the npm registry here when `make viewer` has not run)."""
    from aepacs.web.viewer import install

    if not (VIEWER / "index.html").is_file():
        install(VIEWER)
    return VIEWER


@pytest.fixture(scope="session")
def shipped():  # type: ignore[no-untyped-def]
    """The registry of models shipped inside the package (real trained weights)."""
    from aepacs.models.registry import SHIPPED, Registry

    return Registry(SHIPPED)


@pytest.fixture(scope="session")
def ct_model(shipped):  # type: ignore[no-untyped-def]
    """The first shipped CT model (``factorized``), kept to decode what it sealed."""
    return shipped.load("ct@1")


@pytest.fixture(scope="session")
def ct_wavelet(shipped):  # type: ignore[no-untyped-def]
    """The promoted shipped CT model (``wavelet``), the one CT routes use."""
    return shipped.load("ct")


def current_ref(name: str) -> str:
    """The exact version a bare shipped model name (``ct``) resolves to, e.g. ``ct@3``."""
    from aepacs.models.registry import SHIPPED, Registry

    return Registry(SHIPPED).load(name).ref


def ct_slices(n: int = 2) -> np.ndarray:
    """`n` real CT slices as stored, ``(n, rows, cols, 1)`` int16."""
    files = ct_files()[len(ct_files()) // 2:][:n]
    return np.stack([pydicom.dcmread(f).pixel_array for f in files]).astype(np.int16)[..., None]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fuzz harness's counts (cases, statuses seen, acknowledged, archived), at the end of the run."""
    from tests.fuzz.test_fuzz import STATS

    if STATS:
        terminalreporter.section("fuzz harness")
        for key, value in sorted(STATS.items()):
            terminalreporter.write_line(f"{key}: {value}")


def decode_in_child(child: str, pixels: np.ndarray, stream: bytes, tmp_path: Path, cpu: str) -> dict[str, str]:
    """Run `child` (Python source) in another process on ``argv[1]`` (pixels .npy) and ``argv[2]``
    (the stream); ``cpu="generic"`` makes numba compile for a baseline x86-64 (no AVX: another SIMD
    path, no cache). Returns the JSON object its last line prints."""
    import json
    import os
    import subprocess
    import sys

    np.save(tmp_path / "px.npy", pixels)
    (tmp_path / "s.bin").write_bytes(stream)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if cpu == "generic":
        env.update(NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    out = subprocess.run([sys.executable, "-c", child, str(tmp_path / "px.npy"), str(tmp_path / "s.bin")],
                         env=env, capture_output=True, text=True, check=True, timeout=300)
    result: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def every_byte_flipped(blob: bytes) -> Iterator[bytes]:
    """`blob` with one bit flipped, each byte in turn, its lowest bit and then its highest."""
    for i in range(len(blob)):
        for flip in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= flip
            yield bytes(bad)


def tamper(store: Any, key: str, offset: int, mask: int = 0x40) -> None:
    """Flip bits of one stored blob in place, under its own key, on local files or object storage
    (what a corrupted disk or a hostile admin does: the key no longer matches the bytes)."""
    data = bytearray(store.get(key))
    data[offset] ^= mask
    path = store.path_for(key)
    if isinstance(path, Path):
        os.chmod(path, 0o600)
        path.write_bytes(bytes(data))
    else:
        store.fs.pipe_file(path, bytes(data))

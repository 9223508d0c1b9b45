"""aepacs for Orthanc: Orthanc's files sealed and compressed at rest, or replaced by sealed transport objects.

Loaded by Orthanc's Python plugin (Debian ``orthanc-python``) as its ``PythonScript``, in one of two
modes (``Aepacs.Mode``):

``storage-area`` (the default)
    aepacs becomes Orthanc's storage area (``orthanc.RegisterStorageArea``): every file Orthanc stores
    (DICOM instances and its own attachments) is sealed with aepacs's sealed-object format as it
    arrives (a fresh data key, wrapped by the keyring's KEK, bound to the file's Orthanc id and
    content type) into aepacs's blob store and index, and read back byte for byte. Nothing Orthanc
    does changes: its REST API, DICOM services, DICOMweb, viewers, transcoding and deletions work on
    the original files. A worker process at idle priority then codes each DICOM file losslessly by its
    modality's route and switches it in crash-safely (:mod:`aepacs.pipeline.storage_area`). Any
    failure in ``create`` raises, so Orthanc's store fails and the sender gets a failure status; no
    plaintext is written anywhere.

``transport``
    for sites whose Orthanc must never hold keys: every instance received is checked, encoded by its
    modality's route, sealed and replaced by the Raw Data Storage transport object ``aepacs serve``
    sends on C-GET (:func:`aepacs.pipeline.transport.seal_as_transport`). Failures never let the
    original through: the received-instance callback never raises (Orthanc would keep the original);
    when sealing fails for an instance that came over DICOM it leaves the instance unchanged and
    remembers why, and the incoming C-STORE filter, which Orthanc runs next, refuses every instance
    that is not an aepacs transport object with a failure status (0xA700 out of resources, 0xA900
    dataset mismatch, 0xC000 cannot understand); an instance from any other origin whose sealing
    fails is discarded.

Configuration: an ``Aepacs`` block in Orthanc's configuration (see README.md)::

    "Aepacs": {
      "Mode": "storage-area",                    // or "transport"
      "Config": "/etc/aepacs/site.yaml",       // aepacs config: routes, keyring, index, blob store
      "SitePackages": ["/opt/aepacs/lib/python3.11/site-packages"],
      "Python": "/opt/aepacs/bin/python3",     // optional: runs the compressor (default: beside SitePackages)
      "Keyring": "/etc/aepacs/keyring.json",   // optional: overrides keyring.path
      "Models": "/var/lib/aepacs/models",      // optional: overrides models.path
      "Compress": true,                          // storage-area mode: code DICOM files behind Orthanc
      "CompressAfter": 86400,                    // ... once they are this many seconds old
      "ReadAhead": null,                         // threads decoding coded files ahead (null: one a core)
      "MigrateFrom": null,                       // Orthanc's StorageDirectory from before, while it moves
      "FailWith": null                          // tests only: refuse every instance with this status
    }

Durability (storage-area mode) follows Orthanc's own ``SyncStorageArea``. Each file is written
through to the operating system before Orthanc is told it is stored, so a crash of Orthanc or of
aepacs loses nothing, and flushed to disk within a second. With ``SyncStorageArea`` true (Orthanc's
default), an instance's files (the DICOM file and Orthanc's copy of its header, in the journal) are
also made durable by one ``fdatasync`` of the journal's segment when Orthanc signals
the stored instance, which it does after its own index commit and before it answers the sender: an
acknowledged instance survives a power cut. Orthanc only logs a failure there; the next ``create``
then fails until a sync succeeds, so senders see it. With it false, a power cut loses at most the
last second of files (Orthanc's own storage without it: the kernel's writeback delay, about 30 s).

``CompressAfter`` (seconds): a study is read most while it is new (reported, compared): its files
stay sealed as they came for that long, read back at Orthanc's own speed, and are coded afterwards
(a coded CT slice costs its decoder, about 25 ms, on every read). 0 codes each file at once.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import orthanc  # provided by Orthanc's Python plugin

OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000


ORTHANC_CONFIG: dict[str, Any] = json.loads(orthanc.GetConfiguration())


def _settings() -> dict[str, Any]:
    block = ORTHANC_CONFIG.get("Aepacs", {})
    before = list(sys.path)
    for path in block.get("SitePackages", []):
        site.addsitedir(path)  # processes .pth files too (an editable install of aepacs)
    # aepacs's environment ahead of the system's packages (Debian's python3-*), so that a package and
    # its compiled half come from one place (cffi from the venv with the system's _cffi_backend fails)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
    return block


SETTINGS = _settings()

from aepacs import __version__  # noqa: E402  (after SitePackages is on sys.path)
from aepacs.config import load_config  # noqa: E402
from aepacs.dicom.part10 import parse  # noqa: E402
from aepacs.dicom.transport import PRIVATE_CREATOR, RAW_DATA_STORAGE  # noqa: E402
from aepacs.errors import AepacsError, DatasetMismatch, InputError, StoreFullError  # noqa: E402
from aepacs.pipeline.archive import Archive, load_keyring  # noqa: E402
from aepacs.pipeline.storage_area import StorageArea  # noqa: E402
from aepacs.pipeline.transport import seal_as_transport  # noqa: E402


def _config() -> Any:
    overrides: dict[str, Any] = {}
    if SETTINGS.get("Keyring"):
        overrides["keyring"] = {"path": SETTINGS["Keyring"]}
    if SETTINGS.get("Models"):
        overrides["models"] = {"path": SETTINGS["Models"]}
    return load_config(SETTINGS.get("Config"), overrides=overrides or None)


CONFIG = _config()
KEYRING = load_keyring(CONFIG)
FAIL_WITH = SETTINGS.get("FailWith")
#: Orthanc's own durability setting (fsync after each write to its storage area), which aepacs follows
SYNC = bool(ORTHANC_CONFIG.get("SyncStorageArea", True))
FROM_DICOM = orthanc.InstanceOrigin.DICOM_PROTOCOL  # resolved at load: a plugin that cannot tell does not start
#: why sealing failed, by SOP Instance UID, for the C-STORE filter that runs next
_REFUSED: dict[str, int] = {}
_LOCK = threading.Lock()


def _status(exc: BaseException) -> int:
    if isinstance(exc, StoreFullError):
        return OUT_OF_RESOURCES
    if isinstance(exc, DatasetMismatch):
        return MISMATCH
    if isinstance(exc, InputError):
        return CANNOT_UNDERSTAND
    return OUT_OF_RESOURCES  # codec, keyring or disk trouble: the sender may retry later


def _sop_uid(data: bytes) -> str:
    try:
        return str(parts.dataset.get("SOPInstanceUID", "")) if (parts := parse(data)) else ""
    except Exception:  # noqa: BLE001 (only for the log line and the refusal table)
        return ""


def on_received(data: bytes, origin: Any) -> tuple[Any, bytes | None]:
    """Replace the received instance by its sealed transport object; see the module docstring."""
    try:
        if FAIL_WITH:
            raise AepacsError(f"configured to refuse (FailWith {FAIL_WITH})")
        return orthanc.ReceivedInstanceAction.MODIFY, seal_as_transport(data, KEYRING, CONFIG)
    except BaseException as exc:  # noqa: BLE001 -- never raise: Orthanc would keep the original
        uid = _sop_uid(data)
        status = int(FAIL_WITH or _status(exc))
        orthanc.LogError(f"aepacs: instance {uid or '?'} not sealed (0x{status:04X}): {exc}")
        if not isinstance(exc, AepacsError):
            orthanc.LogError("aepacs: " + "".join(traceback.format_exception(exc)).replace("\n", " | "))
        if origin == FROM_DICOM:  # a DISCARD would answer success: keep it for the C-STORE filter to refuse
            with _LOCK:
                _REFUSED[uid] = status
            return orthanc.ReceivedInstanceAction.KEEP_AS_IS, None
        return orthanc.ReceivedInstanceAction.DISCARD, None


def on_cstore(instance: Any) -> int:
    """0: store (an aepacs transport object); else the DIMSE failure status the sender gets."""
    try:
        tags = json.loads(instance.GetInstanceSimplifiedJson())
        if tags.get("SOPClassUID") == RAW_DATA_STORAGE and PRIVATE_CREATOR in instance.GetInstanceJson():
            return 0
        uid = str(tags.get("SOPInstanceUID", ""))
        with _LOCK:
            status = _REFUSED.pop(uid, CANNOT_UNDERSTAND)
        orthanc.LogWarning(f"aepacs: refusing instance {uid or '?'} with 0x{status:04X}")
        return status
    except BaseException as exc:  # noqa: BLE001 -- a filter that raises makes Orthanc fail the store
        orthanc.LogError(f"aepacs: C-STORE filter: {exc}")
        return OUT_OF_RESOURCES


# -- storage-area mode ------------------------------------------------------------------------
def _python() -> str | None:
    """The compressor's interpreter: ``Python``, else the one beside the first SitePackages (a venv)."""
    if SETTINGS.get("Python"):
        return str(SETTINGS["Python"])
    for site_dir in SETTINGS.get("SitePackages", []):
        candidate = Path(site_dir).resolve().parents[2] / "bin" / "python3"
        if candidate.exists():
            return str(candidate)
    return None


def start_compressor() -> subprocess.Popen[bytes] | None:
    """``aepacs orthanc-compress --follow`` as a child process (it ends when Orthanc does, killed or not)."""
    python = _python()
    if python is None:
        orthanc.LogError("aepacs: no Python for the compressor (set Aepacs.Python): DICOM files stay uncoded")
        return None
    command = [python, "-m", "aepacs", "orthanc-compress", "--follow", "--quiet", "--parent", str(os.getpid()),
               "--age", str(float(SETTINGS.get("CompressAfter", 86400)))]
    for flag, key in (("--config", "Config"), ("--keyring", "Keyring"), ("--models", "Models")):
        if SETTINGS.get(key):
            command += [flag, str(SETTINGS[key])]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)


class SealedStorage:
    """Orthanc's storage-area callbacks on an aepacs :class:`StorageArea`."""

    def __init__(self) -> None:
        legacy = SETTINGS.get("MigrateFrom")  # Orthanc's own storage from before: read there until moved
        # files are appended to a journal as Orthanc hands them over, synced together (before Orthanc
        # answers the sender: stored(), with SyncStorageArea; and every second whatever else came), and
        # moved into the blob store and the index behind Orthanc; what a killed Orthanc left is moved first
        ahead = SETTINGS.get("ReadAhead")  # a coded series decoded ahead of Orthanc's reads, on every core
        self.area = StorageArea(Archive(CONFIG, KEYRING), legacy=Path(legacy) if legacy else None, sync=False,
                                journal=CONFIG.journal_path,
                                read_ahead=int(os.cpu_count() or 1) if ahead is None else int(ahead))
        replayed = self.area.replay()
        if replayed:
            orthanc.LogWarning(f"aepacs: moved {replayed} files a stopped Orthanc left in the journal")

    def create(self, uuid: str, content_type: Any, data: bytes) -> None:
        try:
            if FAIL_WITH:
                raise AepacsError(f"configured to refuse (FailWith {FAIL_WITH})")
            self.area.create(uuid, int(content_type), bytes(data))
        except BaseException as exc:  # raised on: Orthanc fails the store, the sender gets a failure status
            orthanc.LogError(f"aepacs: file {uuid} (type {int(content_type)}) not stored: {exc}")
            raise

    def read(self, uuid: str, content_type: Any) -> bytes:
        try:
            return self.area.read(uuid, int(content_type))
        except BaseException as exc:  # a tampered blob or a missing key: Orthanc's request fails, named
            orthanc.LogError(f"aepacs: file {uuid} (type {int(content_type)}) cannot be read: {exc}")
            raise

    def stored(self, instance: Any, instance_id: str) -> None:
        """Orthanc stored an instance and is about to answer its sender: make its files durable (one sync
        of the file system for the DICOM file, Orthanc's copy of its header and their index rows)."""
        try:
            self.area.flush()
        except BaseException as exc:  # Orthanc only logs it: the next create refuses until a sync succeeds
            orthanc.LogError(f"aepacs: instance {instance_id} stored but not synced: {exc}")
            raise

    def remove(self, uuid: str, content_type: Any) -> None:
        try:
            self.area.remove(uuid, int(content_type))
        except BaseException as exc:
            orthanc.LogError(f"aepacs: file {uuid} (type {int(content_type)}) not removed: {exc}")
            raise


MODE = SETTINGS.get("Mode", "storage-area")
if MODE == "storage-area":
    STORAGE = SealedStorage()
    orthanc.RegisterStorageArea(STORAGE.create, STORAGE.read, STORAGE.remove)
    if SYNC:  # Orthanc calls it in the storing thread, after its index commit, before it answers
        orthanc.RegisterOnStoredInstanceCallback(STORAGE.stored)
    COMPRESSOR = start_compressor() if SETTINGS.get("Compress", True) else None

    def on_change(change_type: Any, level: Any, resource: str) -> None:
        if change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            STORAGE.area.close()  # the journal moved, the last files flushed
            if COMPRESSOR is not None:
                COMPRESSOR.terminate()

    orthanc.RegisterOnChangeCallback(on_change)
elif MODE == "transport":
    orthanc.RegisterReceivedInstanceCallback(on_received)
    orthanc.RegisterIncomingCStoreInstanceFilter(on_cstore)
else:
    raise RuntimeError(f"aepacs: Aepacs.Mode {MODE!r} is not storage-area or transport")
orthanc.LogWarning(f"aepacs {__version__} plugin ready ({MODE} mode"
                   + (f", files {'synced' if SYNC else 'flushed each second'}" if MODE == "storage-area" else "")
                   + "): routes "
                   + ", ".join(f"{k}={v.name}" for k, v in sorted(CONFIG.routes.items()))
                   + f"; key version {KEYRING.active_version}")

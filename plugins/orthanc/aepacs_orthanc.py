"""aepacs for Orthanc: keep sealed transport objects instead of plaintext images.

Loaded by Orthanc's Python plugin (Debian ``orthanc-python``) as its
``PythonScript``. Every instance Orthanc receives is checked, encoded by its
modality's route, sealed (AES-256-GCM) and replaced by the Raw Data Storage
transport object ``aepacs serve`` sends on C-GET, through aepacs's own
library (:func:`aepacs.pipeline.transport.seal_as_transport`). The original is
never stored.

Failures never let the original through:

* the received-instance callback never raises (Orthanc would keep the
  original). When sealing fails for an instance that came over DICOM it
  leaves the instance unchanged and remembers why; the incoming C-STORE filter,
  which Orthanc runs next, then refuses every instance that is not an aepacs
  transport object with a failure status (0xA700 out of resources, 0xA900
  dataset mismatch, 0xC000 cannot understand), so the sender sees the failure
  and retries, and nothing is written;
* an instance from any other origin (REST upload, Lua, another plugin) whose
  sealing fails is discarded.

Configuration: an ``Aepacs`` block in Orthanc's configuration (see README.md)::

    "Aepacs": {
      "Config": "/etc/aepacs/site.yaml",       // aepacs config: routes, keyring, registry
      "SitePackages": ["/opt/aepacs/lib/python3.11/site-packages"],
      "Keyring": "/etc/aepacs/keyring.json",   // optional: overrides keyring.path
      "Models": "/var/lib/aepacs/models",      // optional: overrides models.path
      "FailWith": null                          // tests only: refuse every instance with this status
    }
"""

from __future__ import annotations

import json
import site
import sys
import threading
import traceback
from typing import Any

import orthanc  # provided by Orthanc's Python plugin

OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000


def _settings() -> dict[str, Any]:
    block = json.loads(orthanc.GetConfiguration()).get("Aepacs", {})
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
from aepacs.pipeline.archive import load_keyring  # noqa: E402
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


orthanc.RegisterReceivedInstanceCallback(on_received)
orthanc.RegisterIncomingCStoreInstanceFilter(on_cstore)
orthanc.LogWarning(f"aepacs {__version__} plugin ready: routes "
                   + ", ".join(f"{k}={v.name}" for k, v in sorted(CONFIG.routes.items()))
                   + f"; key version {KEYRING.active_version}")

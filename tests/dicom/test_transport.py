"""The sealed transport object's UIDs are the same on every send, in every process, on every machine."""

from __future__ import annotations

import subprocess
import sys

from aepacs.dicom.records import uid_problem
from aepacs.dicom.transport import FORMAT_UID, transport_uid


def test_transport_and_format_uids_are_stable_across_processes() -> None:
    code = ("from aepacs.dicom.transport import FORMAT_UID, transport_uid; "
            "print(FORMAT_UID, transport_uid('1.2.840.113619.2.55.3'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [FORMAT_UID, transport_uid("1.2.840.113619.2.55.3")]
    assert transport_uid("1.2.3") == transport_uid("1.2.3") != transport_uid("1.2.4")
    assert uid_problem(FORMAT_UID) is None and uid_problem(transport_uid("1.2.3")) is None

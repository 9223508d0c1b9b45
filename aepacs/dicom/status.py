"""The DIMSE statuses aepacs answers and reads (PS3.4 Annex B and C), in one place.

``docs/CONFORMANCE.md`` lists when the archive SCP answers each; the
retrieval client and ``aepacs send`` read them from their peers.
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """A DIMSE status value."""

    SUCCESS = 0x0000
    #: a C-FIND match or a C-GET/C-MOVE sub-operation follows
    PENDING = 0xFF00
    #: C-FIND pending, some optional keys not supported
    PENDING_WARNING = 0xFF01
    CANCEL = 0xFE00
    #: C-GET/C-MOVE: some sub-operations failed (the Failed SOP Instance UID List names them)
    SUBOPERATIONS_FAILED = 0xB000
    #: C-STORE warnings a storage SCP may answer (coercion, elements discarded): stored all the same
    COERCED = 0x0107
    ELEMENTS_DISCARDED = 0x0116
    #: C-GET/C-MOVE (PS3.7 C.5: Refused, Not Authorized): sealed objects are not sent to this requester
    #: (its recipient revoked, or none registered where the archive seals only to recipients)
    NOT_AUTHORIZED = 0x0124
    #: no room for the instance and its archiving, or a spool write failure
    OUT_OF_RESOURCES = 0xA700
    #: C-MOVE destination not among ``server.move_destinations``
    MOVE_DESTINATION_UNKNOWN = 0xA801
    #: the dataset does not match its SOP class or the request (UIDs, pixel data, nesting)
    MISMATCH = 0xA900
    #: not decodable, or input no check foresaw
    CANNOT_UNDERSTAND = 0xC000
    #: the retrieval client's storage SCP could not open or write what it received
    CANNOT_WRITE = 0xC001


#: C-FIND and C-GET/C-MOVE responses that say more follow
PENDING = (Status.PENDING, Status.PENDING_WARNING)


def stored(status: int) -> bool:
    """Whether a C-STORE status means the peer kept the instance (success or a warning)."""
    return status == Status.SUCCESS or status >> 12 == 0xB or status in (Status.COERCED, Status.ELEMENTS_DISCARDED)

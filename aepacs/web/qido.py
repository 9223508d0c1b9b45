"""QIDO-RS (PS3.18 10.6): a search's query parameters as the C-FIND identifier the archive already matches.

One matcher serves DIMSE and DICOMweb: :func:`identifier` turns a QIDO-RS
request (its resource level, the UIDs in its path, its query parameters)
into the identifier :func:`aepacs.store.query.find` takes, and
:func:`response` turns each match into DICOM JSON (PS3.18 F.2) with its
RetrieveURL. Pure functions; :mod:`aepacs.web.app` does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from aepacs.dicom.attributes import BY_KEYWORD, LEVELS
from aepacs.errors import InputError
from aepacs.store.query import COUNTS, KEYS

__all__ = ["DEFAULTS", "QidoError", "Search", "identifier", "response"]

#: What each level returns without includefield (PS3.18 Table 10.6.3-3..5), as far as the index keeps it
DEFAULTS: dict[str, tuple[str, ...]] = {
    "STUDY": ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
              "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
              "StudyDescription", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    "SERIES": ("Modality", "SeriesDescription", "SeriesNumber", "SeriesInstanceUID", "BodyPartExamined",
               "NumberOfSeriesRelatedInstances", "StudyInstanceUID"),
    "IMAGE": ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
              "SeriesInstanceUID", "StudyInstanceUID"),
}
#: query parameters that are not attributes
CONTROL = ("includefield", "limit", "offset", "fuzzymatching")
#: the most matches one response carries when no limit is asked (PS3.18 lets the origin cap it)
MAX_LIMIT = 10_000


class QidoError(InputError):
    """A search the server cannot run as asked: answered 400 with this message."""


@dataclass
class Search:
    """A QIDO-RS search as the archive runs it."""

    level: str
    identifier: Dataset
    limit: int
    offset: int
    #: ``Warning`` header values (PS3.18 8.3.5.1): what was asked and not done
    warnings: list[str] = field(default_factory=list)


def _keyword(name: str) -> str:
    """A parameter's attribute: a keyword, or a tag as 8 hex digits."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        keyword = keyword_for_tag(int(name, 16))
    else:
        keyword = name if tag_for_keyword(name) is not None else ""
    if not keyword:
        raise QidoError(f"unknown attribute {name!r} (a keyword or a tag as 8 hex digits)")
    return keyword


def _vr(keyword: str) -> str:
    attribute = BY_KEYWORD.get(keyword)
    return attribute.vr if attribute is not None else str(dictionary_VR(keyword))


def _integer(params: dict[str, list[str]], name: str, default: int) -> int:
    values = params.get(name, [])
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise QidoError(f"{name}={values[-1]!r} is not an integer") from None
    if value < 0:
        raise QidoError(f"{name} must not be negative")
    return value


def identifier(level: str, path: dict[str, str], params: dict[str, list[str]]) -> Search:
    """The C-FIND identifier of a QIDO-RS search.

    Parameters
    ----------
    level : str
        ``STUDY``, ``SERIES`` or ``IMAGE``: the resource searched.
    path : dict
        UIDs the URL fixes (``StudyInstanceUID``, ``SeriesInstanceUID``).
    params : dict
        The query parameters, each name to every value given.

    Raises
    ------
    QidoError
        An unknown attribute, a malformed limit or offset.
    """
    if level not in LEVELS[1:]:
        raise QidoError(f"no QIDO-RS search at level {level}")
    search = Search(level, Dataset(), _integer(params, "limit", MAX_LIMIT), _integer(params, "offset", 0))
    search.limit = min(search.limit, MAX_LIMIT)
    depth = LEVELS.index(level)
    wanted: dict[str, str] = {k: "" for k in DEFAULTS[level]}
    if level != "STUDY" and "StudyInstanceUID" not in path:  # not scoped by a study: its attributes too
        wanted.update({k: "" for k in DEFAULTS["STUDY"] if not k.startswith("Number")})
    if level == "IMAGE" and "SeriesInstanceUID" not in path:
        wanted.update({k: "" for k in DEFAULTS["SERIES"] if not k.startswith("Number")})
    for name in params.get("includefield", []):
        for item in name.split(","):
            item = item.strip()
            if item == "all":
                wanted.update({k: "" for k, key in KEYS.items() if LEVELS.index(key.level) <= depth})
                wanted.update({k: "" for k, (lvl, _) in COUNTS.items() if lvl == level})
            elif item:
                wanted.setdefault(_keyword(item), "")
    for name, values in params.items():
        if name in CONTROL:
            continue
        keyword = _keyword(name)
        value = "\\".join(v.replace(",", "\\") if _vr(keyword) in ("UI", "CS") else v for v in values)
        key = KEYS.get(keyword)
        if key is None or LEVELS.index(key.level) > depth:
            search.warnings.append(f'299 aepacs "{keyword} is not a matching key at this level: ignored"')
            wanted.setdefault(keyword, "")
            continue
        wanted[keyword] = value
    if params.get("fuzzymatching", ["false"])[-1].lower() == "true":
        search.warnings.append('299 aepacs "fuzzymatching is not supported: matched exactly"')
    wanted.update(path)
    search.identifier.QueryRetrieveLevel = level
    for keyword, value in wanted.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None  # every keyword here was looked up by _keyword or is a known default
        search.identifier.add_new(tag, _vr(keyword), value or None)
    return search


def _url(base: str, match: Dataset, level: str) -> str:
    url = f"{base}/studies/{match.get('StudyInstanceUID', '')}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{match.get('SeriesInstanceUID', '')}"
    if level == "IMAGE":
        url += f"/instances/{match.get('SOPInstanceUID', '')}"
    return url


def response(matches: Iterable[Dataset], level: str, base: str) -> list[dict[str, Any]]:
    """DICOM JSON of each match (the query-only QueryRetrieveLevel dropped), with its RetrieveURL.

    `base` is the service root (``https://host/dicomweb``).
    """
    out = []
    for match in matches:
        ds = Dataset()
        for elem in match:
            if elem.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet"):
                ds.add(elem)
        ds.RetrieveURL = _url(base, match, level)
        out.append(ds.to_json_dict())
    return out

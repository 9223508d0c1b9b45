"""multipart/related bodies: what DICOMweb sends and receives (aepacs.web.multipart)."""

from __future__ import annotations

import pytest

from aepacs.web.multipart import MultipartError, boundary_of, build, parse


def test_build_then_parse_gives_the_parts_back() -> None:
    parts = [(b"\x00\x01--boundary-like\r\n--x", "application/dicom"), (b"", "application/dicom"),
             (b"{}", "application/dicom+json")]
    body, boundary = build(parts)
    got = parse(body, f'multipart/related; type="application/dicom"; boundary={boundary}')
    assert [(p.data, p.content_type) for p in got] == parts


def test_a_quoted_boundary_a_preamble_and_an_epilogue() -> None:
    body = (b"preamble\r\n--b 1\r\nContent-Type: application/dicom\r\nContent-ID: <x>\r\n\r\nDATA\r\n"
            b"--b 1--\r\nepilogue")
    (part,) = parse(body, 'multipart/related; boundary="b 1"; type="application/dicom"')
    assert part.data == b"DATA" and part.headers["content-id"] == "<x>"


@pytest.mark.parametrize("body, content_type, reason", [
    (b"--b\r\n\r\nDATA\r\n--b--", "application/dicom", "multipart/related"),
    (b"--b\r\n\r\nDATA\r\n--b--", "multipart/related", "boundary"),
    (b"--b\r\n\r\nDATA\r\n--b--", "multipart/related; boundary=" + "x" * 71, "boundary"),
    (b"nothing here", "multipart/related; boundary=b", "never occurs"),
    (b"--b\r\nContent-Type: application/dicom\r\n\r\nDATA cut off", "multipart/related; boundary=b", "truncated"),
    (b"--b\r\nContent-Type application/dicom\r\n\r\nDATA\r\n--b--", "multipart/related; boundary=b", "header"),
    (b"--b\r\nContent-Type: application/dicom\r\nDATA\r\n--b--", "multipart/related; boundary=b", "blank line"),
])
def test_malformed_bodies_are_refused_with_a_reason(body: bytes, content_type: str, reason: str) -> None:
    with pytest.raises(MultipartError, match=reason):
        parse(body, content_type)


def test_too_many_parts_are_refused() -> None:
    body, boundary = build([(b"x", "application/dicom")] * 11)
    assert len(parse(body, f"multipart/related; boundary={boundary}")) == 11
    with pytest.raises(MultipartError, match="more than 10"):
        parse(body, f"multipart/related; boundary={boundary}", max_parts=10)


def test_boundary_of_reads_the_parameter() -> None:
    assert boundary_of('Multipart/Related; type="application/dicom"; boundary=abc') == "abc"

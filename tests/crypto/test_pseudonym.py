"""Pseudonyms under the site key: stable, separated by kind, and the key file owner-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aepacs.crypto.pseudonym import pseudonym, site_key
from aepacs.errors import KeyringError


def test_site_key_is_created_once_owner_only_and_refused_when_shared(tmp_path: Path) -> None:
    path = tmp_path / "home" / "pseudonym.key"
    key = site_key(path)
    assert len(key) == 32 and path.stat().st_mode & 0o777 == 0o600
    assert site_key(path) == key  # the same key on every start
    assert site_key(tmp_path / "other.key") != key
    os.chmod(path, 0o644)
    with pytest.raises(KeyringError, match="group or others"):
        site_key(path)


def test_pseudonyms_are_stable_keyed_and_separated_by_kind(tmp_path: Path) -> None:
    key, other = site_key(tmp_path / "a.key"), site_key(tmp_path / "b.key")
    p = pseudonym(key, "patient", "MRN-1")
    assert p == pseudonym(key, "patient", "MRN-1") and len(p) == 16 and p.isalnum()
    assert p != pseudonym(other, "patient", "MRN-1")
    assert p != pseudonym(key, "accession", "MRN-1") and p != pseudonym(key, "patient", "MRN-2")
    assert pseudonym(key, "patient", "") == ""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from aepacs.crypto.keyring import Keyring
from aepacs.errors import KeyringError, MissingKeyError


def test_create_is_owner_only_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "ring" / "keyring.json"
    ring = Keyring.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ring.versions == [1] and ring.active_version == 1 and len(ring.kek(1)) == 32
    with pytest.raises(KeyringError, match="already exists"):
        Keyring.create(path)
    assert Keyring.load(path).kek(1) == ring.kek(1)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_refuses_keyring_readable_by_others(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keyring.json"
    Keyring.create(path)
    os.chmod(path, mode)
    with pytest.raises(KeyringError, match="chmod 600"):
        Keyring.load(path)


def test_rotate_adds_version_and_keeps_old(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = Keyring.create(path)
    first = ring.kek(1)
    assert ring.rotate() == 2
    assert ring.rotate() == 3
    loaded = Keyring.load(path)
    assert loaded.versions == [1, 2, 3] and loaded.active_version == 3
    assert loaded.kek(1) == first
    assert len({loaded.kek(v) for v in loaded.versions}) == 3
    with pytest.raises(MissingKeyError):
        loaded.kek(4)


def test_stale_handle_rotation_does_not_lose_versions(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    a = Keyring.create(path)
    b = Keyring.load(path)
    a.rotate()
    assert b.rotate() == 3  # b re-reads under the lock
    assert Keyring.load(path).versions == [1, 2, 3]


def test_repr_shows_no_key(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "k.json")
    text = repr(ring) + repr(ring.info())
    assert base64.b64encode(ring.kek(1)).decode() not in text and ring.kek(1).hex() not in text


def test_passphrase_protected_keyring(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    ring = Keyring.create(path, b"correct horse")
    ring.rotate()
    raw = path.read_text()
    doc = json.loads(raw)
    assert doc["protection"] == "scrypt-aes256gcm" and "keys" not in doc
    for v in ring.versions:  # no key material in clear
        assert base64.b64encode(ring.kek(v)).decode() not in raw
    with pytest.raises(KeyringError, match="passphrase-protected"):
        Keyring.load(path)
    with pytest.raises(KeyringError, match="wrong passphrase"):
        Keyring.load(path, b"wrong horse")
    loaded = Keyring.load(path, b"correct horse")
    assert loaded.versions == [1, 2] and loaded.kek(2) == ring.kek(2)


def test_damaged_keyring_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    Keyring.create(path)
    path.write_text('{"format": "aepacs-keyring", "version": 1, "protection": "none", "keys": [{"version": 1}]}')
    with pytest.raises(KeyringError, match="damaged"):
        Keyring.load(path)
    with pytest.raises(KeyringError, match="no keyring"):
        Keyring.load(tmp_path / "missing.json")


def test_retire_destroys_an_old_version_only(tmp_path: Path) -> None:
    ring = Keyring.create(tmp_path / "k.json")
    with pytest.raises(KeyringError, match="active"):
        ring.retire(1)
    ring.rotate()
    ring.rotate()
    ring.retire(1)
    again = Keyring.load(tmp_path / "k.json")
    assert again.versions == [2, 3] and again.active_version == 3
    with pytest.raises(KeyringError, match="no key version 1"):
        again.retire(1)
    assert again.rotate() == 4  # versions are never reused


def test_a_loaded_keyring_sees_rotation_and_retirement_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    server = Keyring.create(path)  # a long-running process's copy
    other = Keyring.load(path)
    assert not server.refresh()
    other.rotate()
    assert server.refresh() and server.active_version == 2
    other.retire(1)
    server.refresh()
    with pytest.raises(MissingKeyError):
        server.kek(1)


def test_keys_run_as_root_keep_the_service_users_ownership(tmp_path: Path) -> None:
    """Issue 14: 'keys init' as root left a root-owned keyring.json.lock and 'keys rotate' a root:root
    keyring.json, and the server (another user) then failed Keyring.refresh() with PermissionError."""
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root (as CI runs) to act as root for another user")
    service = 65534  # nobody
    top = Path(tempfile.mkdtemp(prefix="aepacs-keys-", dir="/tmp"))
    os.chmod(top, 0o755)
    home = top / "home"
    home.mkdir(mode=0o700)
    os.chown(home, service, service)
    path = home / "keyring.json"
    ring = Keyring.create(path)  # as root, like 'sudo aepacs keys init'
    assert (path.stat().st_uid, path.stat().st_gid) == (service, service)
    # the server's side: a child that is the service user (forked: Python's files under /root are not its)
    from_parent, to_child = os.pipe()
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.setgid(service)
            os.setuid(service)
            served = Keyring.load(path)
            os.write(to_parent, repr(served.versions).encode() + b"\n")
            os.read(from_parent, 1)  # the root side rotates now
            os.write(to_parent, f"{served.refresh()} {served.versions}\n".encode())
            os._exit(0)
        except BaseException as exc:
            os.write(to_parent, f"{type(exc).__name__}: {exc}\n".encode())
            os._exit(1)
    child = os.fdopen(from_child, "rb")
    assert child.readline().strip() == b"[1]"
    assert ring.rotate() == 2  # as root again, like 'sudo aepacs keys rotate'
    assert (path.stat().st_uid, path.stat().st_gid) == (service, service) and path.stat().st_mode & 0o777 == 0o600
    os.write(to_child, b"g")
    line = child.readline().strip()
    _, status = os.waitpid(pid, 0)
    assert status == 0 and line == b"True [1, 2]", line
    assert not list(home.glob("*.lock"))

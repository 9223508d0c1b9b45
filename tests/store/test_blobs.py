from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aepacs.errors import StoreError
from aepacs.store.atomic import TMP_PREFIX, temp_name
from aepacs.store.blobs import BlobStore, blob_key


def test_put_get_is_content_addressed_and_fanned_out(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    key = store.put(b"sealed bytes")
    assert key == blob_key(b"sealed bytes")
    path = store.path_for(key)
    assert path.relative_to(store.root).parts == (key[:2], key[2:4], f"{key}.aepx")
    assert store.get(key) == b"sealed bytes" and store.exists(key)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert store.put(b"sealed bytes") == key          # idempotent
    assert list(store.keys()) == [key]
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(StoreError, match="missing"):
        store.get(key)
    with pytest.raises(StoreError, match="invalid blob key"):
        store.path_for("../../etc/passwd")


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    """A real write failure (file-size limit hit mid-write) raises and leaves no file at all."""
    root = tmp_path / "blobs"
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from aepacs.store.blobs import BlobStore
        from aepacs.errors import StoreError
        store = BlobStore({str(root)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            store.put(b"x" * (1024 * 1024))
        except StoreError as exc:
            print("refused:", exc)
            sys.exit(0)
        sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "refused" in proc.stdout and "write failed" in proc.stdout
    leftovers = [p for p in root.rglob("*") if p.is_file()]
    assert leftovers == []


def test_temporaries_of_dead_writers_are_swept(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host_pid_dead = temp_name(store.tmp).name.split("-")[1]
    dead = store.tmp / f"{TMP_PREFIX}{host_pid_dead}-{child.pid}-deadbeef"
    alive = temp_name(store.tmp)              # this process: still alive
    foreign = store.tmp / f"{TMP_PREFIX}otherhost-1-cafe"
    for p in (dead, alive, foreign):
        p.write_bytes(b"partial")
    assert BlobStore(store.root) is not None  # opening sweeps
    assert not dead.exists() and alive.exists() and foreign.exists()
    alive.unlink()
    assert os.listdir(store.tmp) == [foreign.name]


def test_fsspec_store_has_the_local_stores_behaviour() -> None:
    from pydicom.uid import generate_uid

    from aepacs.store.blobs import FsspecBlobStore, open_store

    store = open_store(f"memory://t-{generate_uid()}/blobs")
    assert isinstance(store, FsspecBlobStore)
    key = store.put(b"sealed bytes")
    assert store.put(b"sealed bytes") == key  # content-addressed: a no-op
    assert store.get(key) == b"sealed bytes" and store.read_prefix(key, 6) == b"sealed"
    assert list(store.keys()) == [key] and list(store.keys(older_than=0)) == []
    store.delete(key)
    store.delete(key)
    with pytest.raises(StoreError, match="missing"):
        store.get(key)
    assert isinstance(open_store("file:///tmp/aepacs-test-local"), BlobStore)


def test_s3_store_against_a_real_s3_server(s3_server) -> None:  # type: ignore[no-untyped-def]
    from aepacs.store.blobs import FsspecBlobStore, open_store

    url = s3_server.bucket()
    store = open_store(url, endpoint_url=s3_server.endpoint, region="us-east-1")
    assert isinstance(store, FsspecBlobStore)
    blobs = [os.urandom(n) for n in (10, 70_000, 3_000_000)]
    keys = [store.put(b) for b in blobs]
    assert store.put(blobs[0]) == keys[0]  # content-addressed: a no-op
    other = open_store(url, endpoint_url=s3_server.endpoint)  # another node, no cache between them
    for key, blob in zip(keys, blobs, strict=True):
        assert other.get(key) == blob and other.exists(key)
    assert other.read_prefix(keys[2], 100) == blobs[2][:100]
    assert sorted(other.keys()) == sorted(keys) and list(other.keys(older_than=0)) == []
    other.delete(keys[1])
    assert not store.exists(keys[1]) and sorted(store.keys()) == sorted([keys[0], keys[2]])
    with pytest.raises(StoreError, match="missing"):
        store.get(keys[1])
    with pytest.raises(StoreError, match="invalid blob key"):
        store.get("../../" + "0" * 58)  # a key never becomes a path outside the prefix

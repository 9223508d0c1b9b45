from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Callable

import pydicom
import pytest
from pydicom.data import get_testdata_file

from aepacs.dicom.records import InstanceRecord
from aepacs.errors import InputError
from aepacs.store.index import ADDED, CONFLICT, SAME, BlobRef, Index


def record(**changes: object) -> InstanceRecord:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    return dataclasses.replace(InstanceRecord.from_dataset(ds), **changes)


def ref(sha: str = "a" * 64, key: str = "b" * 64) -> BlobRef:
    return BlobRef(codec="jpegls", kek_version=1, blob_key=key, blob_size=10, source_size=20, source_sha256=sha)


def test_record_from_dataset_and_refusal() -> None:
    rec = record()
    assert rec.modality == "CT" and rec.rows == 128 and rec.patient_name
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    del ds.SOPInstanceUID
    with pytest.raises(InputError, match="missing SOPInstanceUID"):
        InstanceRecord.from_dataset(ds)


def test_add_find_same_conflict(new_index_url: Callable[[], str]) -> None:
    index = Index(new_index_url())
    a = record()
    assert index.add(a, ref()) == ADDED
    assert index.add(a, ref()) == SAME
    assert index.add(a, ref(sha="c" * 64)) == CONFLICT
    b = record(sop_uid="1.2.3.4", series_uid="1.2.3", modality="MR")
    assert index.add(b, ref(key="d" * 64)) == ADDED
    assert index.count() == 2
    assert [r.sop_uid for r in index.find(series_uid="1.2.3")] == ["1.2.3.4"]
    assert len(index.find(study_uid=a.study_uid)) == 2
    assert len(index.find(patient_id=a.patient_id)) == 2
    assert index.get("nope") is None
    row = index.get(a.sop_uid)
    assert row.blob_key == "b" * 64 and row.kek_version == 1 and row.source_sha256 == "a" * 64
    (study,) = index.studies()
    assert study.modalities_in_study == "CT\\MR" and study.instances == 2
    assert set(index.blob_keys()) == {"b" * 64, "d" * 64}


def test_keep_first_between_nodes_that_both_know_the_series(new_index_url: Callable[[], str]) -> None:
    """The next instance of a series a node has indexed takes one statement; a second node that indexed
    the same instance first still wins, and the first node's answer says so."""
    url = new_index_url()
    one, two = Index(url), Index(url)
    first, second, third = (record(sop_uid=f"1.2.826.0.1.3680043.8.498.9.{i}") for i in range(3))
    assert one.add(first, ref()) == ADDED and two.add(first, ref()) == SAME  # both know the series now
    assert two.add(second, ref(sha="e" * 64, key="e" * 64)) == ADDED
    assert one.add(second, ref(sha="f" * 64, key="f" * 64)) == CONFLICT
    assert one.add(second, ref(sha="e" * 64, key="e" * 64)) == SAME
    assert one.add(third, ref(sha="1" * 64, key="1" * 64)) == ADDED
    assert two.get(second.sop_uid).blob_key == "e" * 64 and two.count() == 3
    (study,) = two.studies()
    assert study.modalities_in_study == "CT" and study.instances == 3


def _writer(url: str, worker: int, n: int, start: float) -> None:
    import time

    index = Index(url)
    time.sleep(max(0.0, start - time.time()))  # all at once: the same patient and study, new series each
    for i in range(n):
        rec = record(sop_uid=f"1.2.826.0.1.3680043.8.498.{worker}.{i}", modality=("CT", "MR", "US", "CR")[worker],
                     series_uid=f"1.2.826.0.1.3680043.8.498.{worker}")
        assert index.add(rec, ref(key=f"{worker:032x}{i:032x}")) == ADDED
        # every worker also re-adds one shared instance: exactly one wins
        index.add(record(), ref())


def test_concurrent_writers_in_processes(new_index_url: Callable[[], str]) -> None:
    import time

    url = new_index_url()
    Index(url)
    ctx = multiprocessing.get_context("spawn")
    start = time.time() + 3.0
    procs = [ctx.Process(target=_writer, args=(url, w, 40, start)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    index = Index(url)
    assert index.count() == 4 * 40 + 1
    with index.engine.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from patients").scalar() == 1
        assert conn.exec_driver_sql("select count(*) from studies").scalar() == 1
        assert conn.exec_driver_sql("select count(*) from series").scalar() == 5
    (study,) = index.studies()
    assert study.modalities_in_study == "CR\\CT\\MR\\US" and study.instances == 4 * 40 + 1


def _open(url: str, start: float) -> None:
    import time

    time.sleep(max(0.0, start - time.time()))  # all at once
    Index(url).count()


def test_processes_opening_a_new_index_at_once(new_index_url: Callable[[], str]) -> None:
    """Several processes creating the tables of one new database together all succeed."""
    import time

    ctx = multiprocessing.get_context("spawn")
    for trial in range(3):
        url = new_index_url()
        start = time.time() + 2.0
        procs = [ctx.Process(target=_open, args=(url, start)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0], trial


def test_key_rotation_swaps_are_compare_and_swap(new_index_url: Callable[[], str]) -> None:
    index = Index(new_index_url())
    for i in range(3):
        index.add(record(sop_uid=f"1.2.3.{i}"), ref(key=f"{i:064x}"))
    assert index.rekey_count(2) == 3 and index.rekey_count(1) == 0
    slots = [bytes([i]) * 64 for i in range(3)]
    swaps = [(f"1.2.3.{i}", f"{i:064x}", 1, slots[i], 2) for i in range(3)]
    # the third row is stale: it was read under version 5, so it is left alone
    assert index.swap_slots(swaps[:2] + [(*swaps[2][:2], 5, *swaps[2][3:])]) == {"1.2.3.0", "1.2.3.1"}
    assert index.kek_versions() == {1: 1, 2: 2}
    assert bytes(index.get("1.2.3.0").key_slot) == slots[0] and index.get("1.2.3.2").key_slot is None
    fresh = [(u, k, o, bytes([9]) * 64, n) for u, k, o, _, n in swaps]  # slots have fresh nonces
    assert index.swap_slots(fresh) == {"1.2.3.2"}  # the first two no longer match
    # a blob swap: the old blob becomes pending in the same transaction
    index.add_pending([("f" * 64, "1.2.3.0")], "host:1")
    assert index.swap_blobs([("1.2.3.0", "e" * 64, "f" * 64, 10, 3, "jpegls")], "host:1") == set()  # stale old key
    assert index.swap_blobs([("1.2.3.0", f"{0:064x}", "f" * 64, 10, 3, "htj2k")], "host:1") == {"1.2.3.0"}
    assert [(p.blob_key, p.sop_uid) for p in index.pending()] == [(f"{0:064x}", "1.2.3.0")]
    row = index.get("1.2.3.0")
    assert (row.blob_key, row.kek_version, row.key_slot, row.codec) == ("f" * 64, 3, None, "htj2k")
    assert not index.referenced(f"{0:064x}") and index.referenced("f" * 64)
    index.drop_pending(f"{0:064x}")
    assert index.pending() == []
    index.close()

"""Atomic writes of files too large to hold in memory (:func:`aepacs.store.atomic.atomic_lines`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aepacs.store.atomic import atomic_lines


def test_lines_replace_the_file_only_once_all_are_written(tmp_path: Path) -> None:
    out = tmp_path / "slots.jsonl"
    assert atomic_lines(out, (f"line {i}" for i in range(1000))) == 1000
    assert out.read_text().splitlines() == [f"line {i}" for i in range(1000)]
    assert out.stat().st_mode & 0o777 == 0o600

    def broken() -> Iterator[str]:  # the producer fails half way (a database gone, a key refused)
        yield "new first line"
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        atomic_lines(out, broken())
    assert out.read_text().splitlines()[0] == "line 0"  # the old file whole, no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slots.jsonl"]

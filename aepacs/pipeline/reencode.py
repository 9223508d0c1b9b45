"""Bulk re-encoding (``aepacs reencode --from ct@3 --to ct@6``): the archive's objects moved from one
codec to another, crash-safely and beside a serving archive.

Selects every lossless object the index shows coded by the source codec
(a model version, ``ct@3``, or a standard codec, ``jpegls``) and runs it
through the order of effects of a full rekey (:func:`.rekey_batch.full_batch`)
with one step added: the payload is decoded to the original instance and
coded again by the target codec, and the new blob must open to the same
instance (its SHA-256) before the row is switched (compare-and-swap on the
old blob; the row's codec changes with it). A crash at any moment leaves
every object openable; a rerun goes on where the last one stopped, since
switched rows no longer carry the source codec.

Objects stored lossy are left alone (counted): coding a reconstruction again
would add a second generation of loss to a diagnostic image. An object the
target cannot code (it would fall back to another codec) keeps its blob and
is reported.

Runs in this process, on a local pool or on a Dask cluster, as rekey does
(:mod:`.batch`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

from aepacs.codec.learned import LearnedCodec, codec_for
from aepacs.codec.payload import decode_object, encode_object
from aepacs.config import Config
from aepacs.config.routes import STANDARD_CODECS
from aepacs.errors import AepacsError, CodecError, ConfigError
from aepacs.models.registry import ModelError, config_registry
from aepacs.pipeline import batch
from aepacs.pipeline.archive import Archive
from aepacs.pipeline.batch import Summary
from aepacs.pipeline.codecs import resolver
from aepacs.pipeline.rekey_batch import Job, Outcome, full_batch, owner_id, worker_archive


def codec_id(name: str, config: Config) -> str:
    """The codec id objects carry for `name`: a standard codec as named, a model as ``ae:NAME@VERSION``
    (a bare model name: its current version).

    Raises
    ------
    ConfigError
        `name` is neither a standard codec nor a model the registry holds.
    """
    if name in STANDARD_CODECS:
        return name
    try:
        return "ae:" + config_registry(config).load(name.removeprefix("ae:")).ref
    except ModelError as exc:
        raise ConfigError(f"{name!r} is not {', '.join(STANDARD_CODECS)} or a model: {exc}") from None


@dataclass(frozen=True)
class Recoder:
    """Decode a lossless payload to the original instance and code it with `target` (a codec id)."""

    config: Config
    target: str

    @functools.cached_property
    def _learned(self) -> LearnedCodec | None:
        if not self.target.startswith("ae:"):
            return None
        return codec_for(config_registry(self.config).load(self.target[3:]), "lossless")

    def _original(self, payload: bytes) -> bytes:
        return decode_object(payload, resolver(config_registry(self.config)))

    def __call__(self, payload: bytes, sop_uid: str) -> tuple[bytes, str, bytes]:
        data = self._original(payload)
        learned = self._learned
        encoded = encode_object(data, lossless=self.config.codec.lossless if learned else self.target,
                                zstd_level=self.config.codec.zstd_level, learned=learned)
        if encoded.codec != self.target:
            raise CodecError(f"{sop_uid}: {self.target} cannot code this object (it would be stored with "
                             f"{encoded.codec}{'; ' + encoded.gate if encoded.gate else ''}); left as it is")
        return encoded.payload, encoded.codec, hashlib.sha256(data).digest()

    def digest(self, payload: bytes, sop_uid: str) -> bytes:
        return hashlib.sha256(self._original(payload)).digest()


def run_batch(config: Config, target: str, jobs: list[Job]) -> list[Outcome]:
    """Re-encode one batch in a worker process (the unit of work of the pool and of Dask)."""
    try:
        archive = worker_archive(config)
    except AepacsError as exc:
        return [Outcome(j.sop_uid, "failed", reason=f"worker cannot open the archive: {exc}") for j in jobs]
    return full_batch(archive, jobs, owner_id(), _recoder(config, target))


_RECODERS: dict[str, Recoder] = {}


def _recoder(config: Config, target: str) -> Recoder:
    """One recoder (and learned codec) per worker process, archive and target."""
    key = f"{config.index_url}|{config.store_location}|{target}"
    if key not in _RECODERS:
        _RECODERS[key] = Recoder(config, target)
    return _RECODERS[key]


def reencode(config: Config, source: str, target: str, *, workers: int | None = None, dask: str | None = None,
             limit: int | None = None, dry_run: bool = False, progress: bool = True) -> Summary:
    """Code every lossless object stored with `source` again with `target`; see the module docstring.

    Parameters
    ----------
    config : Config
        The archive's configuration (workers open the archive from it).
    source, target : str
        A standard codec (``jpegls``, ``htj2k``, ``jpegxl``, ``zstd``) or a
        model (``ct@3``; a bare name is its current version).
    workers : int, optional
        Local processes; 1 works in this process; default: the CPU count.
    dask : str, optional
        Address of a Dask scheduler (``tcp://host:8786``) to run the batches on.
    limit : int, optional
        Re-encode at most this many objects.
    dry_run : bool
        Count what would be done; change nothing.

    Returns
    -------
    Summary
        One failure never stops the others; they are listed in the summary.

    Raises
    ------
    ConfigError
        `source` or `target` names no codec, or both name the same one.
    """
    source_id, target_id = codec_id(source, config), codec_id(target, config)
    if source_id == target_id:
        raise ConfigError(f"--from and --to both name {source_id}")
    summary = Summary(f"reencode {source_id} -> {target_id}")
    recoder = _recoder(config, target_id)

    def plan(archive: Archive) -> batch.Plan:
        total, lossy = archive.index.recode_count(source_id)
        if lossy:
            summary.notes.append(f"left alone: {lossy} objects stored lossy with {source_id} (coding a "
                                 f"reconstruction again would add a second generation of loss)")
        return batch.Plan(total, (functools.partial(_candidates, archive, source_id),),
                          lambda jobs: full_batch(archive, jobs, owner_id(), recoder))

    return batch.run_job(config, summary, plan, limit=limit, dry_run=dry_run, remote=run_batch,
                         args=(config, target_id), workers=workers, dask=dask, progress=progress)


def _candidates(archive: Archive, source: str, after: int, n: int) -> list[Any]:
    return archive.index.recode_candidates(source, after_pk=after, limit=n)

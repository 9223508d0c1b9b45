"""The codecs a configuration's routes name, found in its model registry.

Where :mod:`aepacs.models` (verified model files) meets :mod:`aepacs.codec`
(what codes pixels): :func:`resolver` gives the payload layer the codec of a
model reference, :func:`learned_codec` the codec of a learned route;
:func:`check_routes` refuses a configuration naming a model that is not
there, and :func:`warm_up` loads each route's codec before the first instance.
"""

from __future__ import annotations

import logging

import numpy as np

from aepacs.codec.base import Codec
from aepacs.codec.learned import LearnedCodec, architecture, codec_for
from aepacs.codec.payload import Resolver
from aepacs.codec.quality import psnr, ssim
from aepacs.config import Config, Route
from aepacs.errors import AepacsError, CodecError, ConfigError
from aepacs.models.registry import ModelError, Registry, config_registry

log = logging.getLogger("aepacs.ingest")


def resolver(registry: Registry | None = None) -> Resolver:
    """The codec of a model reference, from `registry` (default: the site's and the shipped models).

    Raises (when called)
    --------------------
    CodecError
        The registry does not hold the model, or its files fail their hash.
    """
    chosen = registry or Registry.default()

    def resolve(ref: str) -> Codec:
        try:
            return codec_for(chosen.load(ref))
        except ModelError as exc:
            raise CodecError(str(exc)) from None

    return resolve


def learned_codec(r: Route, registry: Registry) -> LearnedCodec:
    """The codec of a learned route (the model verified by hash on first use)."""
    assert r.model is not None
    try:
        model = registry.load(r.model)
    except ModelError as exc:
        raise CodecError(str(exc)) from None
    return codec_for(model, r.mode, gain=r.gain, target_psnr=r.target_psnr)


def check_routes(config: Config) -> None:
    """Refuse routes that name a model the registry does not hold (or whose files fail their hash),
    or that ask a lossless-only model for lossy storage.

    Raises
    ------
    ConfigError
        Naming every such route; a server or an import never starts on a guess.
    """
    registry = config_registry(config)
    problems = []
    for name, r in sorted(config.routes.items()):
        if r.model:
            try:
                model = registry.load(r.model)
            except ModelError as exc:
                problems.append(f"routes.{name}: {exc}")
                continue
            try:
                lossy = architecture(model.arch).lossy
            except CodecError:
                lossy = True  # not a codec at all: the route fails on first use, as before
            if r.mode == "lossy" and not lossy:
                problems.append(f"routes.{name}: {model.ref} is lossless only (architecture {model.arch}); "
                                f"a lossy route names a wavelet model")
    if problems:
        raise ConfigError("; ".join(problems) + " ('aepacs models list' shows the models there are)")


def learned_routes(config: Config) -> list[Route]:
    """The configuration's distinct routes to a registry model, in the order of their names."""
    return sorted({r for r in config.routes.values() if r.model}, key=lambda r: r.name)


def warm_up(config: Config) -> list[str]:
    """Run every learned route's codec once on a small frame, there and back, so the first instance does not wait.

    The first use of a codec in a process loads its model (hash-checked) and
    numba's compiled code: half a second with a warm cache, a minute or more
    on a fresh install, where this fills the cache. A route whose model cannot
    be loaded, or whose frame does not decode to what its encoder rebuilt, is
    logged and named in the result, and left for ingest to report.

    Returns
    -------
    list of str
        The routes that failed, each with its reason (empty when all ran).
    """
    registry = config_registry(config)
    failed = []
    for r in learned_routes(config):
        try:
            codec = learned_codec(r, registry)
            frame = np.zeros((1, 64, 64, codec.channels), np.int16)
            frame[0, 16:48, 16:48] = 100
            data, recon = codec.encode_reconstruct(frame)
            psnr(frame, recon), ssim(frame, recon)
            if not np.array_equal(codec.decode(data), recon):
                raise CodecError(f"{r.model}: a test frame does not decode to what its encoder rebuilt")
        except AepacsError as exc:
            log.warning("route %s: %s", r.name, exc)
            failed.append(f"route {r.name}: {exc}")
    return failed

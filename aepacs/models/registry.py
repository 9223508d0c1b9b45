"""The model registry: versioned model directories, verified by hash before use.

Layout of a registry root::

    <root>/<name>/<version>/manifest.json
    <root>/<name>/<version>/*.safetensors
    <root>/<name>/CURRENT            the promoted version (text)

The manifest records the architecture and its hyperparameters, the
modalities, the training data (description and SHA-256), the metrics
measured at training time and the SHA-256 of every other file. Loading
checks every hash first and refuses a mismatch; weights are read with
safetensors (tensors only, never pickled code). Several roots are searched
in order: the site's registry (``models.path`` in the config), then the
models shipped inside the package.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from safetensors.numpy import load_file, save_file

from aepacs.errors import AepacsError
from aepacs.store.atomic import atomic_write

MANIFEST = "manifest.json"
SHIPPED = Path(__file__).resolve().parent / "shipped"
T = TypeVar("T")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class ModelError(AepacsError):
    """A model is missing, damaged (hash mismatch) or unusable."""


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"ct@2"`` -> ``("ct", 2)``; ``"ct"`` -> ``("ct", None)`` (the promoted version)."""
    name, _, version = ref.partition("@")
    if not _NAME.match(name) or (version and not version.isdigit()):
        raise ModelError(f"bad model reference {ref!r} (want NAME or NAME@VERSION)")
    return name, int(version) if version else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Model:
    """A verified model directory."""

    path: Path
    manifest: dict[str, Any]
    _cache: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def arch(self) -> str:
        return str(self.manifest["arch"])

    @property
    def digest(self) -> str:
        """SHA-256 over the manifest's file hashes: what a sealed object pins."""
        files = json.dumps(self.manifest["files"], sort_keys=True).encode()
        return hashlib.sha256(files).hexdigest()

    def tensors(self, filename: str) -> dict[str, np.ndarray]:
        """The tensors of one weight file (safetensors, verified at load), as numpy arrays."""
        return self.cached(filename, lambda: load_file(str(self.path / filename)))

    def cached(self, key: Hashable, make: Callable[[], T]) -> T:
        """What `make` builds from this model, built once per process (weights, codecs)."""
        if key not in self._cache:
            self._cache[key] = make()
        value: T = self._cache[key]
        return value


_SHARED: dict[tuple[Path, ...], Registry] = {}


def _shared(*roots: Path) -> Registry:
    """One registry per list of roots and process, so a model is verified and loaded once."""
    if roots not in _SHARED:
        _SHARED[roots] = Registry(*roots)
    return _SHARED[roots]


class SiteConfig(Protocol):
    """What the registry reads of a configuration (:class:`aepacs.config.Config`)."""

    @property
    def models_path(self) -> Path: ...


def config_registry(config: SiteConfig) -> Registry:
    """The registry a configuration names (its ``models.path``, then the shipped models)."""
    return _shared(Path(config.models_path), SHIPPED)


class Registry:
    """Model directories under one or more roots; the first root is written to."""

    def __init__(self, *roots: str | Path) -> None:
        self.roots = [Path(r) for r in roots] or [SHIPPED]
        self._loaded: dict[tuple[str, int], Model] = {}

    @classmethod
    def default(cls, site: str | Path | None = None) -> Registry:
        """The site registry (`site`, else ``$AEPACS_MODELS``) followed by the shipped models."""
        site = site or os.environ.get("AEPACS_MODELS")
        return _shared(*([Path(site)] if site else []), SHIPPED)

    def entries(self) -> list[tuple[str, int, Path]]:
        """Every (name, version, directory), first root winning on duplicates."""
        seen: dict[tuple[str, int], Path] = {}
        for root in self.roots:
            for m in sorted(root.glob(f"*/*/{MANIFEST}")) if root.is_dir() else []:
                name, version = m.parent.parent.name, m.parent.name
                if version.isdigit():
                    seen.setdefault((name, int(version)), m.parent)
        return [(n, v, p) for (n, v), p in sorted(seen.items())]

    def current(self, name: str) -> int:
        """The promoted version of `name` (else its highest)."""
        for root in self.roots:
            pointer = root / name / "CURRENT"
            if pointer.is_file():
                return int(pointer.read_text().strip())
        versions = [v for n, v, _ in self.entries() if n == name]
        if not versions:
            raise ModelError(f"no model named {name!r} in {', '.join(map(str, self.roots))}")
        return max(versions)

    def locate(self, ref: str) -> Path:
        name, version = parse_ref(ref)
        version = self.current(name) if version is None else version
        for n, v, p in self.entries():
            if (n, v) == (name, version):
                return p
        raise ModelError(f"model {name}@{version} not found in {', '.join(map(str, self.roots))}")

    def verify(self, ref: str) -> Model:
        """Check every file of a model against its manifest.

        Raises
        ------
        ModelError
            A file is missing, added or differs from its recorded SHA-256.
        """
        path = self.locate(ref)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: manifest unreadable ({exc})") from None
        files = manifest.get("files") or {}
        if not files:
            raise ModelError(f"{path}: manifest lists no files")
        for fname, digest in sorted(files.items()):
            f = path / fname
            if not f.is_file():
                raise ModelError(f"{path}: {fname} is missing")
            if file_sha256(f) != digest:
                raise ModelError(f"{path}: {fname} does not match its SHA-256 in the manifest; refusing to load")
        extra = sorted(p.name for p in path.iterdir() if p.name not in files and p.name != MANIFEST)
        if any(x.endswith((".safetensors", ".pt", ".pth", ".bin")) for x in extra):
            raise ModelError(f"{path}: unlisted weight files {extra}")
        return Model(path, manifest)

    def load(self, ref: str) -> Model:
        """The verified model `ref` (cached per process)."""
        name, version = parse_ref(ref)
        key = (name, self.current(name) if version is None else version)
        if key not in self._loaded:
            self._loaded[key] = self.verify(f"{key[0]}@{key[1]}")
        return self._loaded[key]

    def promote(self, ref: str) -> Model:
        """Make `ref` the version a bare name resolves to (in the first root)."""
        model = self.verify(ref)
        root = self.roots[0] / model.name
        root.mkdir(parents=True, exist_ok=True)
        atomic_write(root / "CURRENT", f"{model.version}\n".encode(), 0o644)
        return model

    def add_metrics(self, model: Model, metrics: dict[str, Any], **extra: Any) -> Model:
        """Record metrics measured after training in the manifest (weights unchanged)."""
        manifest = {**model.manifest, "metrics": metrics, **{k: v for k, v in extra.items() if v is not None}}
        atomic_write(model.path / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(), 0o644)
        self._loaded.pop((model.name, model.version), None)
        return self.verify(model.ref)

    def add(self, name: str, manifest: dict[str, Any], weights: dict[str, dict[str, np.ndarray]],
            version: int | None = None) -> Model:
        """Write a new model version (next free number unless given) into the first root."""
        if not _NAME.match(name):
            raise ModelError(f"bad model name {name!r}")
        versions = [v for n, v, _ in self.entries() if n == name]
        version = version or (max(versions) + 1 if versions else 1)
        path = self.roots[0] / name / str(version)
        if path.exists():
            raise ModelError(f"{path} exists; model versions are never overwritten")
        tmp = path.with_name(f".{version}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        files = {}
        for fname, tensors in weights.items():
            save_file({k: np.asarray(v, order="C") for k, v in tensors.items()}, str(tmp / fname))  # 0-d stays 0-d
            os.chmod(tmp / fname, 0o644)  # weights are not secrets; keys are
            files[fname] = file_sha256(tmp / fname)
        manifest = {**manifest, "name": name, "version": version, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp / MANIFEST, 0o644)
        os.replace(tmp, path)
        return self.verify(f"{name}@{version}")

"""Training a mixing model: the starting state of its adaptive predictor and mixing network.

The mixing codec adapts while it codes (:mod:`aepacs.codec.learned.mixing.kernel`):
its probabilities, mixer weights, probability map and LMS filter all move
after every pixel. What training fits is where every plane starts: the
average over the training planes of where coding leaves that state, iterated
``epochs`` times (each epoch codes the training planes from the last
average). The counts, which set how fast a probability still moves, are
capped at :data:`MAX_COUNT` so that a trained start adapts to a new image
within a few dozen uses of each context. Deterministic; no randomness.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from aepacs.codec.learned.mixing import kernel
from aepacs.codec.learned.mixing.codec import KINDS, STATE, planes_of

MAX_COUNT = 2
State = dict[str, np.ndarray]

__all__ = ["MAX_COUNT", "fit_states", "tensors"]


def _planes(frames: Sequence[np.ndarray], channels: int) -> dict[int, list[tuple[np.ndarray, np.ndarray | None]]]:
    """Per plane kind, (plane from 0, the plane before it or None) as the codec codes them."""
    by_kind: dict[int, list[tuple[np.ndarray, np.ndarray | None]]] = {k: [] for k in set(KINDS[channels])}
    for frame in frames:
        planes = planes_of(frame)
        for j, (plane, k) in enumerate(zip(planes, KINDS[channels], strict=True)):
            by_kind[k].append((plane - plane.min(), planes[j - 1] if j else None))
    return by_kind


def _average(states: list[State]) -> State:
    out: State = {}
    for name in STATE:
        mean = np.mean(np.stack([s[name] for s in states]), axis=0)
        out[name] = np.asarray(np.round(mean), dtype=np.int64)
    out["counts"] = np.minimum(out["counts"], MAX_COUNT)
    return out


def fit_states(frames: Sequence[np.ndarray], channels: int, epochs: int, *, progress: bool = True,
               start: dict[int, State] | None = None, done: int = 0,
               checkpoint: Callable[[int, dict[int, State]], None] | None = None) -> dict[int, State]:
    """The trained starting state per plane kind; see the module docstring.

    Parameters
    ----------
    frames : sequence of ndarray
        Training frames ``(rows, cols, samples)`` of integer pixels.
    channels : int
        Samples per pixel (1 or 3).
    epochs : int
        Averaging rounds.
    start, done, checkpoint
        Resume from the states after epoch `done`; ``checkpoint(epoch, states)`` after each epoch.
    """
    planes = _planes(frames, channels)
    states = start or {k: kernel.initial_state() for k in planes}
    bar = tqdm(total=(epochs - done) * sum(len(p) for p in planes.values()), desc="fit mixing model",
               unit="plane", disable=not progress, file=sys.stderr)
    with ThreadPoolExecutor(2) as pool:
        for epoch in range(done, epochs):
            new = {}
            for k, ps in planes.items():
                def final(job: tuple[np.ndarray, np.ndarray | None], start: State = states[k]) -> State:
                    p, side = job
                    s = kernel.final_state(p, int(p.max()), start, side)
                    bar.update()
                    return s
                new[k] = _average(list(pool.map(final, ps)))
            states = new
            if checkpoint is not None:
                checkpoint(epoch + 1, states)
    bar.close()
    return states


def tensors(states: dict[int, State]) -> dict[str, np.ndarray]:
    """The weight file's tensors: ``"<kind>.<name>"`` for every state array."""
    return {f"{k}.{name}": s[name].astype(np.int32 if name != "mixer" else np.int64)
            for k, s in states.items() for name in STATE}

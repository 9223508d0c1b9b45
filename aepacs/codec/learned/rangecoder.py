# A numba kernel file: shared by the generations' range coders (each inlines its own bit coding).
"""What the learned codecs' binary range coders share: LZMA's 32-bit range and the carry pass.

Both coders (:mod:`aepacs.codec.learned.wavelet.subband`,
:mod:`aepacs.codec.learned.mixing.kernel`) emit the top byte of ``low`` as
they go and add its carry to the byte before; a byte that overflows passes
its carry on in :func:`carry`, once the stream is complete.
"""

from __future__ import annotations

from numba import njit

TOP = 1 << 24  #: renormalise when the range falls below this
M32 = (1 << 32) - 1

__all__ = ["M32", "TOP", "carry"]


@njit(cache=True)
def carry(out, n):
    """Pass carries in ``out[:n]`` (bytes of 256 and up) on towards the start, in place."""
    for k in range(n - 1, 0, -1):
        if out[k] > 0xFF:
            out[k - 1] += out[k] >> 8
            out[k] &= 0xFF

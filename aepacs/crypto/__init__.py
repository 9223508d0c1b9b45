"""Keys and sealing: versioned KEKs and the AES-256-GCM sealed-object container."""

from aepacs.crypto.keyring import Keyring, KeyVersion
from aepacs.crypto.seal import SealedHeader, open_sealed, read_header, rewrap, seal

__all__ = ["Keyring", "KeyVersion", "SealedHeader", "seal", "open_sealed", "read_header", "rewrap"]

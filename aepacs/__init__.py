"""aepacs: an encrypted, learned-compression DICOM archive.

The package is organised by part:

``crypto``   keyring and the sealed-object container (AES-256-GCM)
``codec``    pixel codecs and the plaintext payload inside a sealed object
``store``    blob store and the query index
``pipeline`` the data flows: receive → route → encode → seal → store and
             fetch → open → decode → write
``net``      DICOM networking (archive SCP, retrieval SCU)
"""

__version__ = "0.1.0"

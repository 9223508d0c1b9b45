"""aepacs: an encrypted, learned-compression DICOM archive.

The package is organised by part, each importing only the parts below it
(``setup.cfg [importlinter]``; ``docs/ARCHITECTURE.md`` draws it):

``cli``       the ``aepacs`` command line, one module per command group
``demo``      ``aepacs demo``: the archive over DICOM on the bundled sample files
``net``       DICOM networking: the archive SCP (set-up, handlers, statuses), the retrieval
              client, a storage SCU, the metrics endpoint
``pipeline``  the data flows: receive → check → route → encode → seal → store and
              fetch → open → decode → write; the spool, rekeying, transport objects
``config``    the configuration: the embedded default and a site file, validated
``training``  training codec models (needs torch: ``aepacs[train]``)
``eval``      measuring a model against JPEG 2000 and JPEG-LS; the paper's baseline
``models``    the model registry: versioned directories, verified by hash
``codec``     pixel codecs (lossless, one subpackage per learned generation) and the
              plaintext payload of a sealed object
``audit``     the hash-chained audit trail (and syslog)
``crypto``    the keyring, the sealed-object container (AES-256-GCM), pseudonyms
``store``     the blob store, the query index and its matching, safe files and paths
``dicom``     Part 10 streams, the structural scan, the attributes kept, derived and
              transport objects
``errors``    the exceptions every part raises; ``logs``: the log format
"""

__version__ = "0.1.0"

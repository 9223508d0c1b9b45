"""The ``aepacs`` command line: one module per command group, assembled by :mod:`aepacs.cli.app`.

``keys``     keys init | list | rotate | retire
``recipients``  recipient init (a reader's key pair); recipients add | list | revoke
``archive``  seal, open, info, import, export
``net``      serve, send, retrieve
``models``   train, models, eval
``ops``      rekey, db, audit, demo

Every command reads the configuration (``--config FILE`` or
``$AEPACS_CONFIG`` over the embedded default; data under ``$AEPACS_HOME``).
Errors print one line naming the file or object and what is wrong, and exit
non-zero; ``--debug`` shows the traceback too.

Exit status: 0 success; 1 some objects failed; 2 usage, configuration or
keyring error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from aepacs.cli.common import common_options, numba_cache
from aepacs.config import Config, load_config
from aepacs.errors import AepacsError

__all__ = ["main"]


def _early_config(argv: Sequence[str] | None) -> Config | None:
    """The configuration named by the command line, read before anything else (None: it does not load).

    Its errors are reported by :func:`aepacs.cli.app.run`, after the command
    line itself has been checked.
    """
    known, _ = common_options().parse_known_args(argv)
    try:
        return load_config(getattr(known, "config", None))
    except (AepacsError, OSError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    The process is set up first: files it writes are the owner's alone, and
    numba's cache is placed (:func:`~aepacs.cli.common.numba_cache`) before any
    codec is imported, since the codecs' compiled loops find their cache when
    they are defined. Then the command groups are imported and the command runs.
    """
    os.umask(0o077)  # keys, index, spool, blobs, audit, exports: the owner's alone, whatever the shell's umask
    config = _early_config(argv)
    if config is not None:
        try:
            numba_cache(config)
        except OSError:  # a data directory it cannot make: the command reports it, in one line
            config = None
    from aepacs.cli.app import run  # noqa: PLC0415 -- after numba_cache: see above

    return run(argv, config)


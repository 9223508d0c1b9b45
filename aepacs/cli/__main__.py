"""``python -m aepacs.cli``: the command line."""

from aepacs.cli import main

raise SystemExit(main())

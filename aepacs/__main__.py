"""``python -m aepacs``: the command line."""

from aepacs.cli import main

raise SystemExit(main())

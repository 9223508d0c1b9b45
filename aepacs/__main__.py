from aepacs.cli import main

raise SystemExit(main())

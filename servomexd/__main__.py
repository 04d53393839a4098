"""``python -m servomexd`` runs the same command line as the ``servomexd`` script."""

from servomexd.cli import main

raise SystemExit(main())

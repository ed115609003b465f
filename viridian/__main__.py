"""``python -m viridian``."""

from viridian.cli.main import main

raise SystemExit(main())

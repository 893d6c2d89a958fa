"""``python -m mssgate``."""

from mssgate.cli import main

raise SystemExit(main())

"""``python -m streamimage``: the same entry point as the console script."""

from __future__ import annotations

from streamimage.cli import main

raise SystemExit(main())

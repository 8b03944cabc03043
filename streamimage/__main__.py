"""``python -m streamimage``: the same entry point as the console script."""

from __future__ import annotations

from streamimage.cli import main

# Guarded: anyio's worker processes load the parent's main module (as __mp_main__).
if __name__ == "__main__":
    raise SystemExit(main())

"""streamimage: stream a container image built from Nix store paths.

A drop-in replacement for nixpkgs' ``stream_layered_image.py``: the same conf, the
same command line and, by default, the same bytes out.
"""

from __future__ import annotations

__version__ = "0.1.0"

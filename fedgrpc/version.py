"""The installed fedgrpc version, in a base module the library may import.

`fedgrpc.__version__` re-exports it; library modules (checkpoints record it)
import it from here rather than from the package root, which re-exports the
client and so sits above every layer.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedgrpc")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

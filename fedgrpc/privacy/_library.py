"""The optional `dp-accounting` import, with the error a user can act on.

Privacy is an extra (`pip install 'fedgrpc[dp]'`): a federation that never
turns it on should not pay for scipy and dm-tree at import time, and one
that does should learn what to install instead of reading a traceback.
"""

from __future__ import annotations

from types import ModuleType

from fedgrpc.errors import ConfigError

INSTALL_HINT = "pip install 'fedgrpc[dp]'"


def dp_accounting() -> ModuleType:
    """Google's `dp_accounting` package.

    Raises:
        ConfigError: it is not installed (names the extra to install).
    """
    try:
        import dp_accounting as library
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise ConfigError(
            f"differential privacy needs Google's dp-accounting library: {INSTALL_HINT}"
        ) from exc
    return library  # type: ignore[no-any-return]

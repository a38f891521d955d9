"""Resolve a user's Aggregator or OuterOptimizer, checked before the run starts.

A stage can be given three ways:

- a built-in name (`aggregator = "median"`);
- `"package.module:ClassName"` in the TOML: the module is imported, the
  attribute looked up and called with the setting's parameters table;
- through the Python API: a class or factory (called the same way) or a
  ready instance.

Whichever way, the result is checked against the stage's Protocol *now*,
so a typo or a half-written class fails the coordinator's start with a
`ConfigError` naming the setting, the value and what to do, not a round
hours later. Importing a module runs its code: a `module:Class` value is as
trusted as the coordinator's own config file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, cast

from fedgrpc.aggregate import (
    Aggregator,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    MultiKrum,
    TrimmedMean,
    WeightedMean,
    hybrid,
    krum,
)
from fedgrpc.errors import ConfigError
from fedgrpc.optim import OuterOptimizer

BUILTIN_AGGREGATORS: Mapping[str, Callable[..., Aggregator]] = {
    "mean": WeightedMean,
    "median": CoordinateMedian,
    "trimmed_mean": TrimmedMean,
    "krum": krum,
    "multi_krum": MultiKrum,
    "geometric_median": GeometricMedian,
    "centered_clipping": CenteredClipping,
    "hybrid": hybrid,
}
"""Aggregator names the config accepts without a `module:` prefix."""

_AGGREGATOR_METHODS = ("aggregate",)
_OUTER_METHODS = ("step", "state_dict", "load_state_dict")
_HOLDINGS = ("sum", "every_update")


def is_plugin_spec(value: object) -> bool:
    """True for a `module:attribute` string (the TOML form of a user's stage)."""
    return isinstance(value, str) and ":" in value


def resolve_spec(spec: str, setting: str) -> object:
    """Import `package.module:Attr` (Attr may be dotted) and return the attribute.

    Raises:
        ConfigError: malformed spec, module not found or failing to import,
            attribute missing.
    """
    module_name, _, attr_path = spec.partition(":")
    parts = attr_path.split(".")
    dotted = [*module_name.split("."), *parts]
    if not all(p.isidentifier() for p in dotted):
        raise ConfigError(
            f"{setting}={spec!r} is not a plugin reference: expected "
            "'package.module:ClassName' (module path, one colon, class name)"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{setting}={spec!r}: module {exc.name or module_name!r} was not found; "
            "install the package or add its directory to PYTHONPATH"
        ) from exc
    except Exception as exc:
        raise ConfigError(
            f"{setting}={spec!r}: importing {module_name!r} failed with "
            f"{type(exc).__name__}: {exc}; fix the module"
        ) from exc
    found: object = module
    for depth, part in enumerate(parts):
        if not hasattr(found, part):
            where = ".".join([module_name, *parts[:depth]])
            raise ConfigError(
                f"{setting}={spec!r}: {where!r} has no attribute {part!r}; "
                "check the spelling after the colon"
            )
        found = getattr(found, part)
    return found


def load_aggregator(
    value: object,
    *,
    setting: str = "aggregator",
    params: Mapping[str, Any] | None = None,
) -> Aggregator:
    """A built-in name, `module:Class`, class, factory or instance -> an Aggregator.

    Raises:
        ConfigError: as `resolve_spec`, or the constructor failed, or the
            result lacks `name`, `needs` (`sum`/`every_update`) or `aggregate`.
    """
    label = _describe(value)
    if isinstance(value, str) and not is_plugin_spec(value):
        factory = BUILTIN_AGGREGATORS.get(value)
        if factory is None:
            raise ConfigError(
                f"{setting}={value!r} is unknown: expected one of "
                f"{', '.join(sorted(BUILTIN_AGGREGATORS))}, or "
                "'package.module:ClassName' for your own"
            )
        value = factory
    built = _instantiate(value, setting, params, label)
    _check_members(built, setting, label, _AGGREGATOR_METHODS)
    needs = getattr(built, "needs", None)
    if needs not in _HOLDINGS:
        raise ConfigError(
            f"{setting}={label}: its `needs` is {needs!r}, expected "
            "'sum' (it only needs the weighted sum) or 'every_update'"
        )
    return cast(Aggregator, built)


def load_outer_optimizer(
    value: object,
    *,
    setting: str = "outer_optimizer",
    params: Mapping[str, Any] | None = None,
) -> OuterOptimizer:
    """`module:Class`, class, factory or instance -> an OuterOptimizer.

    Built-in names (`nesterov`, `fedavg`, ...) are not plugins: the config
    builds them with `fedgrpc.optim.build_outer_optimizer`.

    Raises:
        ConfigError: a bare name, as `resolve_spec`, the constructor failed,
            or the result lacks `name`, `step`, `state_dict`, `load_state_dict`.
    """
    if isinstance(value, str) and not is_plugin_spec(value):
        raise ConfigError(
            f"{setting}={value!r} is not a plugin reference: built-in outer "
            "optimizers go through fedgrpc.optim.build_outer_optimizer; your own "
            "is written 'package.module:ClassName'"
        )
    label = _describe(value)
    built = _instantiate(value, setting, params, label)
    _check_members(built, setting, label, _OUTER_METHODS)
    return cast(OuterOptimizer, built)


def _instantiate(
    value: object, setting: str, params: Mapping[str, Any] | None, label: str
) -> object:
    """Resolve a spec, then call a class or factory with `params`; keep instances."""
    if isinstance(value, str):
        value = resolve_spec(value, setting)
    if _is_ready_instance(value):
        if params:
            raise ConfigError(
                f"{setting}: parameters {sorted(params)} were given, but "
                f"{label} is an instance, not a class; pass the class"
            )
        return value
    if not callable(value):
        raise ConfigError(
            f"{setting}={label} is an object of type {type(value).__name__}, "
            "not a class or a factory that builds the stage; point it at the class"
        )
    try:
        return value(**dict(params or {}))
    except Exception as exc:
        raise ConfigError(
            f"{setting}={label}: constructing it with "
            f"{dict(params or {})!r} failed with {type(exc).__name__}: {exc}; "
            f"check the {setting} parameters"
        ) from exc


def _is_ready_instance(value: object) -> bool:
    """An object that already is a stage (has `aggregate` or `step`), not a factory."""
    return not isinstance(value, type) and (
        hasattr(value, "aggregate") or hasattr(value, "step")
    )


def _check_members(
    built: object, setting: str, label: str, methods: tuple[str, ...]
) -> None:
    """Refuse an object missing a Protocol member, naming every one missing."""
    missing = [m for m in methods if not callable(getattr(built, m, None))]
    if not isinstance(getattr(built, "name", None), str):
        missing.insert(0, "name (a str property)")
    if missing:
        raise ConfigError(
            f"{setting}={label}: the object it gives "
            f"({type(built).__qualname__}) lacks {', '.join(missing)}; implement "
            "the Protocol's members (see its docstring)"
        )


def _describe(value: object) -> str:
    """How the error messages name what the user gave."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, type) or callable(value):
        qualname = getattr(value, "__qualname__", type(value).__qualname__)
        return f"{getattr(value, '__module__', '?')}.{qualname}"
    return f"an instance of {type(value).__qualname__}"

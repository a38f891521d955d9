"""fedgrpc's top-level API is pinned: changing it must be a deliberate edit here."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fedgrpc

EXPECTED = [
    "ClientConfig",
    "ConfigError",
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorUnavailableError",
    "Dense",
    "DiLoCoClient",
    "DistributedDiLoCoClient",
    "FedGrpcError",
    "IncompatibleClientError",
    "IncompleteUpdateError",
    "InvalidUpdateError",
    "ModelMismatchError",
    "PrivacyBudgetExceededError",
    "ShuttingDownError",
    "TooLargeError",
    "TopK",
    "UnknownClientError",
    "WrongRoundError",
    "__version__",
]


def test_all_is_pinned_sorted_and_resolvable() -> None:
    assert fedgrpc.__all__ == EXPECTED
    assert sorted(fedgrpc.__all__) == fedgrpc.__all__
    for name in fedgrpc.__all__:
        assert getattr(fedgrpc, name) is not None
    assert fedgrpc.__version__ != "0.0.0+unknown"  # installed metadata is found


def test_errors_share_one_base_and_config_errors_are_value_errors() -> None:
    errors = [getattr(fedgrpc, n) for n in EXPECTED if n.endswith("Error")]
    assert fedgrpc.TopK(density=0.01, bits=8).density == 0.01
    assert all(issubclass(e, fedgrpc.FedGrpcError) for e in errors)
    assert issubclass(fedgrpc.ConfigError, ValueError)
    assert issubclass(fedgrpc.ModelMismatchError, fedgrpc.InvalidUpdateError)


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        _ = fedgrpc.NoSuchThing  # type: ignore[attr-defined]


def test_importing_fedgrpc_does_not_import_grpc() -> None:
    code = (
        "import sys, fedgrpc, fedgrpc.domain.model_spec; print('grpc' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr


def test_the_cli_starts_without_torch() -> None:
    """`fedgrpc status`, `keygen`, `--help`: torch would add ~1.5 s to each."""
    code = "import sys, fedgrpc.cli, fedgrpc.config; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr

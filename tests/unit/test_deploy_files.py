"""server/ must not rot: the example TOML, the systemd unit and the Dockerfile.

Docker and systemd are not available here, so these check what can go stale
without them: every config option documented, every command line parsing
with the real `fedgrpc` parser, the keys the daemon's lifecycle relies on.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest

from fedgrpc.cli import build_parser
from fedgrpc.config import CoordinatorConfig

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "server"


def test_example_toml_documents_every_option() -> None:
    text = (SERVER / "coordinator.example.toml").read_text()
    written = set(re.findall(r"^#? ?([a-z_][a-z0-9_]*) = ", text, flags=re.MULTILINE))

    fields = {f.name for f in dataclasses.fields(CoordinatorConfig)}

    assert fields <= written, f"not in the example TOML: {sorted(fields - written)}"
    assert CoordinatorConfig.from_toml(SERVER / "coordinator.example.toml") == (
        CoordinatorConfig()
    )


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read(SERVER / "fedgrpc-coordinator.service")
    return unit


def test_systemd_unit_runs_serve_with_checkpoints_and_drains_on_sigterm() -> None:
    service = _unit()["Service"]

    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/fedgrpc/.venv/bin/fedgrpc"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve"
    assert args.checkpoint_dir.startswith(f"/var/lib/{service['StateDirectory']}/")
    assert service["User"] == "fedgrpc"
    assert service["KillSignal"] == "SIGTERM"
    assert service["Restart"] == "on-failure"
    assert int(service["TimeoutStopSec"]) >= 30
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
    }.items():
        assert service[key] == value, key
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = (SERVER / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in joined.splitlines()
        if line.strip()
    ]


def _one(instructions: list[tuple[str, str]], name: str) -> str:
    found = [args for op, args in instructions if op == name]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def test_dockerfile_runs_serve_as_non_root_with_health_and_state_volume() -> None:
    steps = _dockerfile()
    ops = [op for op, _ in steps]

    assert _one(steps, "FROM") == "python:3.11-slim"
    makefile = (REPO / "Makefile").read_text()
    torch_version = re.search(r"^TORCH_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert torch_version is not None
    assert f"ARG TORCH_VERSION={torch_version.group(1)}" in {
        f"{o} {a}" for o, a in steps
    }
    runs = [args for op, args in steps if op == "RUN"]
    torch_step = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    project_step = next(i for i, r in enumerate(runs) if "pip install ." in r)
    assert torch_step < project_step  # torch pinned first, as `make install` does
    assert _one(steps, "USER") == "fedgrpc"
    assert ops.index("USER") < ops.index("ENTRYPOINT")
    assert "7070" in _one(steps, "EXPOSE").split()
    assert json.loads(_one(steps, "VOLUME")) == ["/var/lib/fedgrpc"]
    argv = json.loads(_one(steps, "ENTRYPOINT")) + json.loads(_one(steps, "CMD"))
    assert argv[0] == "fedgrpc"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve"
    assert args.checkpoint_dir.startswith("/var/lib/fedgrpc/")
    copied = [a.split() for op, a in steps if op == "COPY"]
    assert [
        str(SERVER.relative_to(REPO) / "coordinator.example.toml"),
        args.config,
    ] in (copied)


def test_dockerfile_health_check_is_valid_python_on_the_grpc_port() -> None:
    check = _one(_dockerfile(), "HEALTHCHECK")
    command = json.loads(check.split("CMD", 1)[1])

    assert command[:2] == ["python", "-c"]
    compile(command[2], "<healthcheck>", "exec")
    assert "127.0.0.1:7070" in command[2]


@pytest.mark.parametrize("path", ["Dockerfile", "fedgrpc-coordinator.service"])
def test_deploy_files_pin_the_same_config_path(path: str) -> None:
    assert "/etc/fedgrpc/coordinator.toml" in (SERVER / path).read_text()

"""Client-level DP with 100 simulated clients: central vs distributed at one ε.

The half of `bench/privacy.py` that issue 14 asks for besides DP-SGD:
DP-FedAvg over n clients (default 100, each holding an IID shard of
scikit-learn's 8x8 digits, no download), a multinomial logistic regression
(650 parameters: few enough that the noise of ε = 1 over 100 clients still
leaves something to learn), R rounds of H full-batch gradient steps per
client, FedAvg outer step (lr 1). Every client takes part in every round
(q = 1), so neither placement claims subsampling amplification.

Per round and per mode, with the *library's* mechanisms, not copies:

- `none`: the plain mean of the unclipped updates (the non-private line);
- `central`: `fedgrpc.privacy.CentralGaussian` clips each update to S and
  adds N(0, (z·S/n)²) to the mean, as the coordinator does;
- `distributed`: every client's update goes through
  `fedgrpc.privacy.distributed.encode_noisy_share` (L2 clip, int8 codes at
  the round's step, conditional rounding, its discrete Gaussian share) and
  the sum of codes plus shares is what a masked round unmasks (masks cancel
  exactly in the ring; `noised_sum`). Its plan comes from
  `DistributedGaussian.plan_round`, as the secure round mode builds it.

z is calibrated once by `dp-accounting` for R releases at ε (q = 1, δ);
both private modes run at that z (the distributed plan raises each
client's share until its Gaussian-equivalent multiplier covers z, so its ε
is at most the central one's: both are reported, from the ledger). The
goal: distributed within 1 % of central validation loss at the same ε.

The noise stage's own cost is timed here too (central: clip + noise per
round; distributed: one client's clip, rounding and sampling); its share of
a real round over gRPC is what `bench/central_dp.py` and
`bench/distributed_dp.py` measure.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedgrpc.privacy import PrivacyLedger, Release, noise_for_budget
from fedgrpc.privacy.central import CentralGaussian
from fedgrpc.privacy.distributed import (
    DistributedGaussian,
    encode_noisy_share,
)

MODES = ("none", "central", "distributed")
VALUE_BITS = 8
QMAX = (1 << (VALUE_BITS - 1)) - 1
ROUNDING_BETA = math.exp(-0.5)
CODE_HEADROOM = 8.0
"""Per-value clip C = 8·S/√d: an update of norm S spread evenly has values
of S/√d, so 8x that clips only coordinates far in the tail; one code step
is C/127."""


@dataclass(frozen=True, slots=True)
class ClientLevelSettings:
    """One client-level run's knobs (the CLI fills them)."""

    clients: int = 100
    rounds: int = 30
    inner_steps: int = 5
    local_lr: float = 0.5
    clip_norm: float = 0.5
    delta: float = 1e-5


def _digits(seed: int, clients: int) -> tuple[torch.Tensor, ...]:
    """(x per client (n, m, 64), y per client (n, m), x_val, y_val), IID shards."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    val = len(y) // 6
    per_client = (len(y) - val) // clients
    used = per_client * clients
    xs = x[val : val + used].reshape(clients, per_client, 64)
    ys = y[val : val + used].reshape(clients, per_client)
    return xs, ys, x[:val], y[:val]


def _local_updates(
    weights: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, s: ClientLevelSettings
) -> np.ndarray:
    """Every client's pseudo-gradient (local - global), n x 650, in one batch.

    All n clients train at once as batched matrices (bmm), H full-batch
    gradient steps each from the same global weights.
    """
    n = xs.shape[0]
    local = weights.detach().repeat(n, 1).requires_grad_(True)
    for _ in range(s.inner_steps):
        w, b = local[:, :640].reshape(n, 64, 10), local[:, 640:]
        logits = torch.bmm(xs, w) + b[:, None, :]
        loss = (
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, 10), ys.reshape(-1), reduction="sum"
            )
            / ys.shape[1]
        )  # each client's mean loss, summed: per-client gradients
        (grad,) = torch.autograd.grad(loss, local)
        with torch.no_grad():
            local -= s.local_lr * grad
    return (local.detach() - weights).numpy().astype(np.float64)


def _evaluate(
    weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    logits = x @ weights[:640].reshape(64, 10) + weights[640:]
    loss = float(torch.nn.functional.cross_entropy(logits, y))
    accuracy = float((logits.argmax(dim=1) == y).float().mean())
    return loss, accuracy


def run_client_level(
    mode: str, epsilon: float, seed: int, s: ClientLevelSettings
) -> dict[str, Any]:
    """One run: final validation loss/accuracy, ε spent, noise-stage seconds."""
    torch.manual_seed(seed)
    xs, ys, x_val, y_val = _digits(seed, s.clients)
    dimension = 650
    weights = torch.zeros(dimension)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    z = noise_for_budget(epsilon, s.delta, Release(1.0, count=s.rounds))
    ledger = PrivacyLedger()
    step = CODE_HEADROOM * s.clip_norm / math.sqrt(dimension) / QMAX
    central = CentralGaussian(s.clip_norm, z)
    distributed = DistributedGaussian(
        s.clip_norm, z, min_survivors=s.clients, rounding_beta=ROUNDING_BETA
    )
    plan = distributed.plan_round(
        dimension=dimension, step=step, value_bits=VALUE_BITS, participants=s.clients
    )
    noise_s: list[float] = []
    for _ in range(s.rounds):
        updates = _local_updates(weights, xs, ys, s)
        start = time.perf_counter()
        if mode == "central":
            rows = torch.from_numpy(updates.astype(np.float32))
            for row in rows:
                central.clip_update(row)
            mean = rows.sum(dim=0) / s.clients
            central.finish_aggregate(mean, s.clients, generator)
            release = central.round_release(s.clients, s.clients)
        elif mode == "distributed":
            total = np.zeros(dimension, dtype=np.int64)
            for row in updates:  # each client clips, rounds and noises its own
                share = encode_noisy_share(
                    row, clip_norm=plan.clip_norm, step=plan.step, qmax=QMAX,
                    norm_bound=plan.norm_bound, client_std=plan.client_std, rng=rng,
                )  # fmt: skip
                total += share.codes
                total += share.noise
            mean = torch.from_numpy(total.astype(np.float64) * plan.step / s.clients)
            release = plan.release(s.clients)
        else:
            mean = torch.from_numpy(updates.mean(axis=0))
            release = None
        noise_s.append(time.perf_counter() - start)
        if release is not None:
            ledger.record(release)
        weights = weights + mean.float()
    loss, accuracy = _evaluate(weights, x_val, y_val)
    per_client = (
        statistics.median(noise_s) / s.clients if mode == "distributed" else None
    )
    return {
        "mode": mode,
        "target_epsilon": epsilon if mode != "none" else None,
        "seed": seed,
        "val_loss": loss,
        "val_accuracy": accuracy,
        "epsilon": ledger.epsilon(s.delta) if mode != "none" else None,
        "noise_multiplier": z if mode != "none" else None,
        "noise_multiplier_effective": (
            plan.noise_multiplier(s.clients) if mode == "distributed" else None
        ),
        "noise_stage_round_s": statistics.median(noise_s),
        "noise_stage_per_client_s": per_client,
        "ring_bits": plan.ring_bits if mode == "distributed" else None,
    }


def summarise_client_level(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds per (mode, ε); distributed's loss gap to central (goal ≤ 1 %)."""
    table: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = (
            run["mode"]
            if run["mode"] == "none"
            else f"{run['mode']}@{run['target_epsilon']:g}"
        )
        table.setdefault(key, {"runs": []})["runs"].append(run)
    for row in table.values():
        got = row.pop("runs")
        row["val_loss"] = statistics.fmean(r["val_loss"] for r in got)
        row["val_accuracy"] = statistics.fmean(r["val_accuracy"] for r in got)
        row["seeds"] = len(got)
        eps = [r["epsilon"] for r in got if r["epsilon"] is not None]
        row["epsilon"] = max(eps) if eps else None
        row["noise_stage_round_s"] = statistics.median(
            r["noise_stage_round_s"] for r in got
        )
    gaps = {}
    for key, row in table.items():
        if key.startswith("distributed@"):
            twin = table.get("central@" + key.split("@", 1)[1])
            if twin is not None:
                gaps[key.split("@", 1)[1]] = 100.0 * (
                    row["val_loss"] / twin["val_loss"] - 1.0
                )
    return {
        "table": table,
        "distributed_vs_central_loss_pct": gaps,
        "goal_distributed_within_1pct": bool(gaps)
        and all(abs(g) <= 1.0 for g in gaps.values()),
    }


CLIENT_LEVEL_EPSILONS = (1.0, 8.0)
"""The issue's client-level targets."""
SEEDS = 5


def client_level(
    quick: bool, epsilons: list[float], progress: Callable[[str], None]
) -> dict[str, Any]:
    """bench/privacy.py's `client_level` section: the table and the goal.

    `epsilons` is the CLI's list; only those among the issue's {1, 8} run
    here (record-level's 3 is its own figure).
    """
    settings = (
        ClientLevelSettings(rounds=3, clients=100) if quick else (ClientLevelSettings())
    )
    seeds = 1 if quick else SEEDS
    targets = [e for e in epsilons if e in CLIENT_LEVEL_EPSILONS] or list(
        CLIENT_LEVEL_EPSILONS
    )
    runs: list[dict[str, Any]] = []
    for seed in range(seeds):
        runs.append(run_client_level("none", targets[0], seed, settings))
        for epsilon in targets:
            for mode in ("central", "distributed"):
                run = run_client_level(mode, epsilon, seed, settings)
                runs.append(run)
                loss, accuracy = run["val_loss"], run["val_accuracy"]
                progress(f"seed {seed} {mode} ε={epsilon:g}: loss {loss:.4f} "
                         f"acc {accuracy:.3f}")  # fmt: skip
    return {
        "clients": settings.clients,
        "rounds": settings.rounds,
        "inner_steps": settings.inner_steps,
        "clip_norm": settings.clip_norm,
        "delta": settings.delta,
        "seeds": seeds,
        **summarise_client_level(runs),
        "per_run": runs,
    }

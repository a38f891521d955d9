"""What FedProx costs per inner step: the optimizer pre-step hook, timed.

A stack of --layers Linear(--width, --width) layers (default 10 x 1024^2,
10.5M parameters, float32, CPU, one torch thread as on a shared 2-core box)
trains with AdamW. Per step it times `optimizer.step()` alone, plain and
with `fedgrpc.client.proximal.ProximalTerm` (mu * (w - w_global) added to
each gradient, one tensor-sized temporary per parameter), alternating the
two so both see the same machine load, and a whole step (forward, backward,
step) for scale. The anchors are plain tensors here, as `LocalRun` passes
views of its downlink buffer: no model-sized buffer is added on CPU.

Prints one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch

from fedgrpc.client.proximal import ProximalTerm


def _model(width: int, layers: int) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--mu", type=float, default=0.01)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    args = parser.parse_args()
    if args.quick:
        args.width, args.layers, args.steps = 128, 2, 4
    torch.set_num_threads(1)
    model = _model(args.width, args.layers)
    params = list(model.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    inputs = torch.randn(32, args.width)
    anchors = [p.detach().clone() for p in params]  # stands in for the downlink
    term = ProximalTerm(params, args.mu)
    term.anchor_to(anchors)
    plain_s: list[float] = []
    prox_s: list[float] = []
    whole_s: list[float] = []

    def backward() -> None:
        optimizer.zero_grad()
        model(inputs).pow(2).mean().backward()

    def whole() -> None:
        backward()
        optimizer.step()

    try:
        for step in range(args.steps):
            whole_s.append(_timed(whole))
            term.close()  # plain: no hook installed
            backward()
            plain_s.append(_timed(optimizer.step))
            term = ProximalTerm(params, args.mu)
            term.anchor_to(anchors)
            backward()
            prox_s.append(_timed(optimizer.step))
            if step % 10 == 0:
                print(f"[fedprox] step {step}", file=sys.stderr, flush=True)
    finally:
        term.close()
    plain, prox = statistics.median(plain_s), statistics.median(prox_s)
    report = {
        "bench": "fedprox",
        "parameters": sum(p.numel() for p in params),
        "torch_threads": torch.get_num_threads(),
        "optimizer_step_ms": round(plain * 1e3, 2),
        "optimizer_step_with_fedprox_ms": round(prox * 1e3, 2),
        "fedprox_overhead_ms": round((prox - plain) * 1e3, 2),
        "fedprox_overhead_of_whole_step": round(
            (prox - plain) / statistics.median(whole_s), 3
        ),
        "whole_step_ms": round(statistics.median(whole_s) * 1e3, 2),
        "extra_model_sized_buffers_cpu": 0,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()

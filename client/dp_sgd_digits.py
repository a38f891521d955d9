"""Record-level DP-SGD in a federated client: handwritten digits, no download.

Each client is a silo (a hospital, say) holding its own records; with
DP-SGD no single record can be told from the model it helps train, what
the coordinator and the other silos see included. Run a coordinator, then
two or more copies of this script (each takes its own shard of
scikit-learn's 8x8 digits):

    .venv/bin/fedgrpc serve --listen 127.0.0.1:7070 --min-clients 2 \
        --inner-steps 10 --open-enrollment --seed-from-first-client
    .venv/bin/python client/dp_sgd_digits.py --target 127.0.0.1:7070 --shard 0 &
    .venv/bin/python client/dp_sgd_digits.py --target 127.0.0.1:7070 --shard 1

Needs `pip install 'fedgrpc[dp]'` (Opacus, dp-accounting) and scikit-learn.
The loop is an ordinary PyTorch loop; privacy adds two lines (`RecordDP`
and `make_private`, which returns the DP optimizer and the Poisson loader)
and `record_dp=private` tells the client to sign its ε(δ) into every
update (`fedgrpc status` shows it per client). The client stops with
`PrivacyBudgetExceededError` rather than train past `--max-epsilon`.
"""

from __future__ import annotations

import argparse
import json
import warnings

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

import fedgrpc
from fedgrpc.privacy import RecordDP


def digits(shard: int, shards: int) -> tuple[TensorDataset, TensorDataset]:
    """This client's training records, and the test split every client shares."""
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    train_x, test_x, train_y, test_y = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    mine = slice(shard, None, shards)  # disjoint shards: no record in two silos
    return TensorDataset(train_x[mine], train_y[mine]), TensorDataset(test_x, test_y)


def accuracy(model: torch.nn.Module, data: TensorDataset) -> float:
    """Share of `data` the model classifies right."""
    x, y = data.tensors
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def main() -> None:
    """Train with DP-SGD on this silo's digits, federated through --target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="coordinator host:port")
    parser.add_argument("--shard", type=int, default=0, help="this client's shard")
    parser.add_argument("--shards", type=int, default=2, help="clients in all")
    parser.add_argument("--epsilon", type=float, default=3.0,
                        help="ε to spend over --epochs (at --delta)")  # fmt: skip
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--max-epsilon", type=float, default=None,
                        help="ε never to pass (default: --epsilon)")  # fmt: skip
    parser.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-grad-norm", type=float, default=1.0,
                        help="C: clip each record's gradient to this norm")  # fmt: skip
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--identity-key", default="", help="private key (PEM)")
    parser.add_argument("--coordinator-key", default="",
                        help="the coordinator's .pub file or fingerprint")  # fmt: skip
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="opacus")  # "secure RNG off" etc.
    torch.manual_seed(args.shard)

    train, test = digits(args.shard, args.shards)
    model: torch.nn.Module = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.5)
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)

    # (1) The privacy plan: z is calibrated so --epochs of steps spend --epsilon.
    private = RecordDP(
        target_epsilon=args.epsilon, delta=args.delta, epochs=args.epochs,
        max_grad_norm=args.max_grad_norm, max_epsilon=args.max_epsilon,
    )  # fmt: skip
    model, optimizer, loader = private.make_private(model, optimizer, loader)
    config = fedgrpc.ClientConfig(
        identity_key=args.identity_key, coordinator_key=args.coordinator_key
    )
    steps_planned = private.planned_steps or 0
    # (2) Join; every update carries this silo's ε(δ), signed.
    with fedgrpc.DiLoCoClient(
        args.target, model, config=config, record_dp=private
    ) as client:
        while private.steps < steps_planned and not client.finished:
            for x, y in loader:  # Poisson batches: their sizes vary
                loss = torch.nn.functional.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                client.step(loss=loss.item(), num_samples=len(y))
                if private.steps >= steps_planned or client.finished:
                    break
        summary = {
            "client_id": client.client_id,
            "model_version": client.model_version,
            "records": len(train),
            "steps": private.steps,
            "noise_multiplier": private.noise_multiplier,
            "epsilon": private.epsilon,
            "delta": private.delta,
            "opacus_epsilon": private.opacus_epsilon(),
            "test_accuracy": accuracy(model, test),
        }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

"""Embedding fedgrpc in a plain PyTorch training loop.

Run a coordinator, then two or more copies of this script:

    .venv/bin/fedgrpc serve --listen 127.0.0.1:7070 --min-clients 2 --inner-steps 20 \
        --open-enrollment --seed-from-first-client
    .venv/bin/python client/torch_loop.py --target 127.0.0.1:7070 --steps 100 &
    .venv/bin/python client/torch_loop.py --target 127.0.0.1:7070 --steps 100

`--open-enrollment` lets these clients join with throwaway keys;
`--seed-from-first-client` lets the first to join bring the initial weights
(or start the coordinator with `--init-model model.safetensors`). A real
deployment lists its clients' keys instead (`fedgrpc keygen`, then
`--identity-key coordinator.key --allowed-client-keys DIR` on the
coordinator and `--identity-key NAME.key --coordinator-key coordinator.pub`
here).

Everything below is an ordinary loop; the federation adds three lines:
create the client, call `client.step()` after each optimizer step, close it.
Each copy fits y = X @ w_true on its own private data; the coordinator never
sees the data, only averaged pseudo-gradients, and all copies end with the
same global weights.
"""

from __future__ import annotations

import argparse
import json

import torch

import fedgrpc


def main() -> None:
    """Train on private data, federated through the coordinator at --target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="coordinator host:port")
    parser.add_argument("--steps", type=int, default=100, help="local steps to train")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for this client's data"
    )
    parser.add_argument(
        "--identity-key", default="", help="this client's private key (PEM)"
    )
    parser.add_argument(
        "--coordinator-key",
        default="",
        help="the coordinator's .pub file or fingerprint to insist on",
    )
    parser.add_argument(
        "--proximal-mu",
        type=float,
        default=0.0,
        help="FedProx strength mu: + mu/2 ||w - w_global||^2 (default: 0, off)",
    )
    args = parser.parse_args()
    config = fedgrpc.ClientConfig(
        identity_key=args.identity_key,
        coordinator_key=args.coordinator_key,
        proximal_mu=args.proximal_mu,
    )

    torch.manual_seed(args.seed)
    true_weights = torch.arange(8, dtype=torch.float32)  # shared ground truth
    inputs = torch.randn(512, 8)  # this client's private data
    targets = inputs @ true_weights + 0.01 * torch.randn(512)

    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)

    # (1) Join the federation; inner_steps=None follows the coordinator's H.
    with fedgrpc.DiLoCoClient(
        args.target, model, inner_steps=None, config=config
    ) as client:
        for step in range(args.steps):
            batch = torch.randint(0, len(inputs), (32,))
            loss = torch.nn.functional.mse_loss(
                model(inputs[batch]).squeeze(-1), targets[batch]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            # (2) Every H steps this pushes the pseudo-gradient and loads the
            # new global weights into `model` in place.
            client.step(loss=loss, num_samples=len(batch))
            if step % 20 == 0:
                print(f"step {step} loss {loss.item():.4f}", flush=True)
        final_loss = torch.nn.functional.mse_loss(
            model(inputs).squeeze(-1), targets
        ).item()
        # (3) Leaving the `with` block closes the client cleanly.
        summary = {
            "client_id": client.client_id,
            "model_version": client.model_version,
            "final_loss": final_loss,
            "weights": model.weight.detach().flatten().tolist(),
        }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

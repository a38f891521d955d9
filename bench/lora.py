"""LoRA (rank 8) vs full fine-tuning, federated: uplink per round and validation loss.

One byte-level Llama built from a config (default d = 256, 4 layers, MLP
1024, vocab 256: 4.3M parameters), first pretrained centrally for
`--pretrain-steps` on the first part of the Python standard library's
sources (a stand-in for a pretrained checkpoint; nothing is downloaded).
Then the same federated budget twice, each against its own in-process
coordinator (`serve_in_thread`, dense fp32, Nesterov outer optimizer), with
`--clients` `DiLoCoClient` threads on disjoint later shards (a different
part of the library: a mild domain shift), `--rounds` x H inner steps of
AdamW each:

* full: every parameter trains and travels;
* lora: `peft` LoRA of rank `--rank` on q, k, v and o; the base is frozen,
  so under `federate = "trainable"` (the default) only the adapter travels.

Uplink per round: update payload bytes a client pushes per round
(`DiLoCoClient.bytes_sent`, the seeding push excluded), mean over clients.
Validation loss: the global model's, on fixed held-out batches (the
`evaluate` callback), before the first round and after the last. Goal
(issue 15): LoRA's uplink per round <= 2 % of full fine-tuning's.

Prints one JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import peft
import torch
import transformers
from _util import log

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.sim.corpus import TextSplits, load_stdlib_corpus, sample_batch

BENCH = "lora"
GOAL_RATIO = 0.02
"""Issue 15: LoRA uplink per round <= 2 % of the full model's."""
PRETRAIN_SHARE = 0.5
"""The first half of the train split pretrains the base; clients get the rest."""
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
SETUP_KEYS = ("dim", "layers", "mlp", "context", "batch", "rank", "clients",
              "rounds", "inner_steps", "pretrain_steps")  # fmt: skip


def _base(args: argparse.Namespace) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=args.dim, intermediate_size=args.mlp,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.heads, max_position_embeddings=args.context,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy."""
    logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def _pretrain(args: argparse.Namespace, tokens: torch.Tensor) -> dict[str, Any]:
    """The shared starting checkpoint: a short central run on `tokens`."""
    model = _base(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.pretrain_lr)
    data = torch.Generator().manual_seed(99)
    for step in range(args.pretrain_steps):
        loss = _loss(model, *sample_batch(tokens, args.batch, args.context, data))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0:
            log(BENCH, f"pretrain step {step} loss {loss.item():.3f}")
    return {k: v.clone() for k, v in model.state_dict().items()}


def _model(
    args: argparse.Namespace, start: dict[str, Any], lora: bool
) -> torch.nn.Module:
    model = _base(args)
    model.load_state_dict(start)
    if not lora:
        return model
    config = peft.LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=TARGETS
    )
    wrapped: torch.nn.Module = peft.get_peft_model(model, config)
    return wrapped


def _client(
    args: argparse.Namespace,
    address: str,
    model: torch.nn.Module,
    tokens: torch.Tensor,
    seed: int,
    lr: float,
    evaluate: Any,
) -> dict[str, Any]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    data = torch.Generator().manual_seed(seed)
    config = ClientConfig(rpc_timeout_s=120, round_wait_s=600, connect_timeout_s=60)
    with DiLoCoClient(address, model, config=config, evaluate=evaluate) as client:
        joined_bytes = client.bytes_sent  # the seeding push, if this client seeded
        for _ in range(args.rounds * client.inner_steps):
            loss = _loss(model, *sample_batch(tokens, args.batch, args.context, data))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            client.step(loss, num_samples=args.batch)
        return {
            "uplink_bytes_per_round": (client.bytes_sent - joined_bytes) / args.rounds,
            "rounds": client.rounds_completed,
            "eval": [
                (e.model_version, e.metrics["val_loss"]) for e in client.eval_history
            ],
        }


def _federate(
    args: argparse.Namespace, text: TextSplits, start: dict[str, Any], lora: bool
) -> dict[str, Any]:
    """One federated fine-tune; the figures of the run."""
    name = "lora" if lora else "full"
    held_out = torch.Generator().manual_seed(1234)
    val = [
        sample_batch(text.validation, args.batch, args.context, held_out)
        for _ in range(args.val_batches)
    ]

    def evaluate(model: torch.nn.Module, version: int) -> dict[str, float]:
        with torch.no_grad():
            losses = [_loss(model, x, y).item() for x, y in val]
        return {"val_loss": sum(losses) / len(losses)}

    later = text.train[int(text.train.numel() * PRETRAIN_SHARE) :]
    shards = torch.tensor_split(later, args.clients)
    # Built on this thread: HF init draws from torch's global RNG.
    models = [_model(args, start, lora) for _ in range(args.clients)]
    lr = args.lora_lr if lora else args.full_lr
    config = CoordinatorConfig(
        listen="127.0.0.1:0", min_clients=args.clients, inner_steps=args.inner_steps,
        open_enrollment=True, seed_from_first_client=True, round_timeout_s=600.0,
    )  # fmt: skip
    results: list[dict[str, Any]] = [{} for _ in models]
    failures: list[BaseException] = []

    def work(i: int) -> None:
        try:
            # Client 0 alone evaluates: the global model is the same for all.
            judge = evaluate if i == 0 else None
            results[i] = _client(args, address, models[i], shards[i], i, lr, judge)
        except BaseException as exc:  # re-raised on the main thread
            failures.append(exc)

    started = time.perf_counter()
    with serve_in_thread(config) as coordinator:
        address = coordinator.address
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(models))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    wall_s = time.perf_counter() - started
    trainable = sum(p.numel() for p in models[0].parameters() if p.requires_grad)
    history = results[0]["eval"]
    uplink = sum(r["uplink_bytes_per_round"] for r in results) / len(results)
    final = history[-1][1]
    log(BENCH, f"{name}: uplink/round {uplink:.0f} B, val {final:.3f}, {wall_s:.0f} s")
    return {
        "trainable_params": trainable,
        "lr": lr,
        "uplink_bytes_per_round": uplink,
        "val_loss_start": history[0][1],
        "val_loss_final": history[-1][1],
        "val_loss_by_version": dict(history),
        "rounds": results[0]["rounds"],
        "wall_s": round(wall_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--mlp", type=int, default=1024)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--inner-steps", type=int, default=10)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--pretrain-lr", type=float, default=2e-3)
    parser.add_argument("--full-lr", type=float, default=3e-4)
    parser.add_argument("--lora-lr", type=float, default=1e-3)  # of 1e-3, 2e-3, 6e-3
    parser.add_argument("--val-batches", type=int, default=8)
    parser.add_argument("--corpus-bytes", type=int, default=4_000_000)
    parser.add_argument(
        "--lora-only", action="store_true", help="skip full fine-tuning (lr sweeps)"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    args = parser.parse_args()
    if args.quick:
        args.dim, args.layers, args.mlp, args.context = 64, 2, 256, 32
        args.rounds, args.inner_steps, args.pretrain_steps = 2, 2, 4
        args.val_batches, args.corpus_bytes = 2, 200_000
    torch.set_num_threads(1)  # one per client thread on a shared 2-core box
    text = TextSplits.from_bytes(load_stdlib_corpus(args.corpus_bytes))
    pretrain = text.train[: int(text.train.numel() * PRETRAIN_SHARE)]
    start = _pretrain(args, pretrain)
    total = sum(v.numel() for k, v in start.items() if "rotary" not in k)
    full = None if args.lora_only else _federate(args, text, start, lora=False)
    lora = _federate(args, text, start, lora=True)
    # Full fine-tuning pushes every parameter, 4 bytes each (dense fp32).
    full_uplink = 4 * total if full is None else full["uplink_bytes_per_round"]
    ratio = lora["uplink_bytes_per_round"] / full_uplink
    report = {
        "bench": BENCH,
        "quick": args.quick,
        "model_params": total,
        "setup": {k: getattr(args, k) for k in SETUP_KEYS},
        "full": full,
        "lora": lora,
        "uplink_ratio": ratio,
        "goals": {"lora_uplink<=2%_full": ratio <= GOAL_RATIO},
    }
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()

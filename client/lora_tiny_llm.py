"""LoRA fine-tuning of a small causal LM, federated: only the adapter travels.

A transformers Llama built from a config (no hub download), LoRA rank 8 on
its attention projections (`peft`), trained on byte-level text from the
Python standard library's sources, each client on its own shard. Frozen
parameters never travel (`ClientConfig.federate = "trainable"`, the
default), so every round's uplink is the adapter's ~1 % of the model. The
global model's validation loss is logged after every round (`evaluate`),
and the final global adapter is saved in PEFT's format.

Self-contained (starts a coordinator in this process, runs --clients
clients on threads):

    .venv/bin/python client/lora_tiny_llm.py --rounds 5 --out lora_adapter

Or one client per process against a running coordinator:

    .venv/bin/fedgrpc serve --listen 127.0.0.1:7070 --min-clients 2 \
        --inner-steps 10 --open-enrollment --seed-from-first-client
    .venv/bin/python client/lora_tiny_llm.py --target 127.0.0.1:7070 --shard 0 &
    .venv/bin/python client/lora_tiny_llm.py --target 127.0.0.1:7070 --shard 1

Every client must start from the same base model (the frozen weights never
travel, so nothing would reconcile them): here the same config and seed,
in practice the same pretrained checkpoint. Load the result with

    model = PeftModel.from_pretrained(base_model, "lora_adapter")

Needs `pip install 'fedgrpc[lora]'` (peft, transformers). Prints one JSON
summary line per client.
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path
from typing import Any

import peft
import torch
import transformers

import fedgrpc
from fedgrpc.integrations.peft import save_adapter
from fedgrpc.sim.corpus import TextSplits, load_stdlib_corpus, sample_batch

CONTEXT, BATCH = 64, 8
VAL_BATCHES = 4


def base_model() -> transformers.LlamaForCausalLM:
    """The shared base: a small byte-level Llama, the same in every client."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=256,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=CONTEXT, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def lora_model(rank: int) -> peft.PeftModel:
    """The base, frozen, with a rank-`rank` LoRA on q, k, v and o."""
    config = peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )  # fmt: skip
    model: peft.PeftModel = peft.get_peft_model(base_model(), config)
    return model


def next_byte_loss(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of the next byte."""
    logits = model(input_ids=x).logits
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


def run_client(
    args: argparse.Namespace,
    shard: int,
    text: TextSplits,
    model: peft.PeftModel,
    out: Path,
) -> dict[str, Any]:
    """Train `model`'s LoRA on this shard for --rounds rounds; save the global one."""
    tokens = text.shard(shard, args.shards)
    data = torch.Generator().manual_seed(shard)
    held_out = torch.Generator().manual_seed(1234)  # same validation batches everywhere
    val = [
        sample_batch(text.validation, BATCH, CONTEXT, held_out)
        for _ in range(VAL_BATCHES)
    ]

    def evaluate(model: torch.nn.Module, version: int) -> dict[str, float]:
        with torch.no_grad():
            losses = [next_byte_loss(model, x, y).item() for x, y in val]
        return {"val_loss": sum(losses) / len(losses)}

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    config = fedgrpc.ClientConfig(name=f"lora-{shard}")
    with fedgrpc.DiLoCoClient(
        args.target, model, config=config, evaluate=evaluate
    ) as client:
        while client.rounds_completed < args.rounds and not client.finished:
            model.train()
            loss = next_byte_loss(model, *sample_batch(tokens, BATCH, CONTEXT, data))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            client.step(loss, num_samples=BATCH)
        save_adapter(model, out, client=client)
        trainable_n, total_n = model.get_nb_trainable_parameters()
        return {
            "client_id": client.client_id,
            "model_version": client.model_version,
            "rounds": client.rounds_completed,
            "adapter_params": trainable_n,
            "model_params": total_n,
            "bytes_sent": client.bytes_sent,
            "bytes_received": client.bytes_received,
            "val_loss": {
                e.model_version: e.metrics["val_loss"] for e in client.eval_history
            },
            "adapter_dir": str(out),
        }


def main() -> None:
    """Federate a LoRA fine-tune, from this process or against --target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target", default="", help="coordinator host:port (default: start one here)"
    )
    parser.add_argument(
        "--clients", type=int, default=2, help="clients on threads, without --target"
    )
    parser.add_argument(
        "--shard", type=int, default=0, help="this client's shard, with --target"
    )
    parser.add_argument(
        "--shards", type=int, default=2, help="shards the text is cut into"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--inner-steps", type=int, default=10, help="H, without --target"
    )
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--corpus-bytes", type=int, default=2_000_000)
    parser.add_argument(
        "--out",
        default="lora_adapter",
        help="directory for the adapter (one subdirectory per client without --target)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # small matrices: threads would only contend
    text = TextSplits.from_bytes(load_stdlib_corpus(args.corpus_bytes))
    if args.target:
        model = lora_model(args.rank)
        summary = run_client(args, args.shard, text, model, Path(args.out))
        print(json.dumps(summary), flush=True)
        return
    args.shards = args.clients
    coordinator = fedgrpc.CoordinatorConfig(
        listen="127.0.0.1:0", min_clients=args.clients, inner_steps=args.inner_steps,
        open_enrollment=True, seed_from_first_client=True, round_timeout_s=120.0,
    )  # fmt: skip
    with fedgrpc.Coordinator(coordinator) as running:
        args.target = running.address
        results: list[dict[str, Any]] = [{} for _ in range(args.clients)]
        # Built here, one after the other: initialisation draws from torch's
        # global RNG, which threads building at once would interleave.
        models = [lora_model(args.rank) for _ in range(args.clients)]

        failures: list[BaseException] = []

        def work(i: int) -> None:
            try:
                out = Path(args.out) / f"client{i}"
                results[i] = run_client(args, i, text, models[i], out)
            except BaseException as exc:  # re-raised below, on the main thread
                failures.append(exc)

        threads = [
            threading.Thread(target=work, args=(i,)) for i in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    for result in results:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

"""The simulator's model: a small nanoGPT-style byte-level transformer.

This is the model end of the simulator's data path: corpus -> shard ->
`sample_batch` -> `CharTransformer` -> inner AdamW steps -> pseudo-gradient ->
coordinator. It is sized by `TrainDefaults` so that a 4-client, 20-round,
50-inner-step federation needs about a minute of compute on two CPU cores,
one torch thread per client process, while the loss still falls well below
the uniform ln(256) = 5.55 nats.

Nothing here knows about gRPC or DiLoCo: the same functions serve a
single-process sanity run and every simulated client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from torch import nn

from fedgrpc.errors import ConfigError
from fedgrpc.sim.corpus import VOCAB_SIZE, sample_batch

_INIT_STD = 0.02
"""GPT-2's init scale: small enough that the initial loss is ~ln(vocab)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CharModelConfig:
    """Shape of a `CharTransformer`; every client must use the same one."""

    vocab_size: int = VOCAB_SIZE
    """Token ids are bytes, so 256 unless a test wants something smaller."""
    context: int = 64
    """Longest input sequence in tokens (size of the position table)."""
    d_model: int = 64
    """Residual stream width; must be divisible by `n_heads`."""
    n_heads: int = 4
    """Attention heads per block (head width `d_model // n_heads`)."""
    n_layers: int = 2
    """Transformer blocks."""
    dropout: float = 0.0
    """Dropout probability; 0 because a run this short cannot overfit."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "d_model", "n_heads", "n_layers"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name}={value!r} is invalid: expected >= 1")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"d_model={self.d_model} is invalid: expected a multiple of "
                f"n_heads={self.n_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout!r} is invalid: expected [0, 1)")


class _CausalSelfAttention(nn.Module):
    def __init__(self, config: CharModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        # [B, T, 3C] -> 3 x [B, H, T, C/H]
        q, k, v = (
            part.view(batch, time, self.n_heads, width // self.n_heads).transpose(1, 2)
            for part in self.qkv(x).split(width, dim=2)
        )
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        # [B, H, T, C/H] -> [B, T, C]
        projected: torch.Tensor = self.proj(
            out.transpose(1, 2).reshape(batch, time, width)
        )
        return projected


class _Block(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then x + mlp(ln(x)), as in GPT-2."""

    def __init__(self, config: CharModelConfig) -> None:
        super().__init__()
        width = config.d_model
        self.ln_attn = nn.LayerNorm(width)
        self.attn = _CausalSelfAttention(config)
        self.ln_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width, bias=False),
            nn.GELU(),
            nn.Linear(4 * width, width, bias=False),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        out: torch.Tensor = x + self.mlp(self.ln_mlp(x))
        return out


class CharTransformer(nn.Module):
    """Decoder-only transformer over bytes; `forward` maps [B, T] ids to logits.

    The output head is *not* tied to the token embedding. With a 256-token
    vocabulary tying would save only 256 x d_model weights, but it would make
    `state_dict()` list one storage under two names; federated code that walks
    `state_dict()` (checkpoints, weight loading) would then move and average
    the same tensor twice. Untied, every name is one independent tensor.
    """

    def __init__(self, config: CharModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.context, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.ln_final = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits, float [B, T, vocab], for int64 `tokens` [B, T].

        Raises:
            ConfigError: T exceeds `config.context` (no position embedding).
        """
        time = tokens.shape[1]
        if time > self.config.context:
            raise ConfigError(
                f"sequence length {time} exceeds the model's context "
                f"{self.config.context}; sample shorter windows"
            )
        positions = torch.arange(time, device=tokens.device)
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(positions))
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.ln_final(x))
        return logits

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-byte cross-entropy in nats (0-d float tensor)."""
        logits = self(inputs)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _init_weights(model: CharTransformer, generator: torch.Generator) -> None:
    # GPT-2: N(0, 0.02) for every matrix, with the residual output projections
    # scaled by 1/sqrt(2 * n_layers) so the residual stream's variance does not
    # grow with depth; LayerNorm gains 1 and biases 0. Every tensor is written
    # here, so the model may be allocated uninitialised.
    residual_std = _INIT_STD / math.sqrt(2 * model.config.n_layers)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() < 2:
                param.fill_(1.0 if name.endswith(".weight") else 0.0)
                continue
            is_residual_out = name.endswith(("attn.proj.weight", "mlp.2.weight"))
            std = residual_std if is_residual_out else _INIT_STD
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def build_model(config: CharModelConfig, seed: int) -> CharTransformer:
    """A freshly initialised model whose weights depend only on `config` and `seed`.

    The layers are allocated on the meta device and then filled from a
    private CPU generator, so torch's default initialisers never run: every
    client process builds bit-identical starting weights, and the global RNG
    (which the caller may seed differently per client) is left untouched.
    Build on the CPU, then move the model to its device.
    """
    with torch.device("meta"):
        model = CharTransformer(config)
    model.to_empty(device="cpu")
    _init_weights(model, torch.Generator().manual_seed(seed))
    return model


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainDefaults:
    """Inner-loop settings that fit `fedgrpc simulate`'s time budget.

    Measured on a 2-core Xeon with `torch.set_num_threads(1)`: one step
    (forward, backward, clip, AdamW) of the default 136k-parameter model
    takes ~20 ms alone and ~58 ms of wall time when four client processes
    share the two cores, so 4 clients x 1000 steps need ~65 s. An in-process
    DiLoCo run of that size (outer Nesterov, lr 0.7, momentum 0.9) took the
    validation loss from 5.55 to 1.77 nats. Batch 48 reached a slightly
    lower loss but at ~32 ms a step left too little of the 3-minute margin.
    """

    batch_size: int = 32
    """Windows per inner step."""
    lr: float = 3e-3
    """AdamW learning rate; high because runs are short and the model tiny."""
    weight_decay: float = 0.1
    """Decoupled decay, applied to matrices only (see `make_inner_optimizer`)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """nanoGPT's betas; a shorter second-moment memory suits short runs."""
    grad_clip_norm: float = 1.0
    """Global L2 norm clip; guards the first high-lr steps."""
    model: CharModelConfig = field(default_factory=CharModelConfig)
    """Model shape; its `context` is also the training window length."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(
                f"batch_size={self.batch_size!r} is invalid: expected >= 1"
            )
        for name in ("lr", "grad_clip_norm"):
            value = getattr(self, name)
            if not value > 0:  # also rejects NaN
                raise ConfigError(f"{name}={value!r} is invalid: expected > 0")
        if self.weight_decay < 0:
            raise ConfigError(
                f"weight_decay={self.weight_decay!r} is invalid: expected >= 0"
            )

    @property
    def context(self) -> int:
        """Training window length in tokens (the model's full context)."""
        return self.model.context


def make_inner_optimizer(
    model: nn.Module, defaults: TrainDefaults
) -> torch.optim.Optimizer:
    """AdamW over `model`, decaying matrices but not LayerNorm parameters.

    DiLoCo's inner optimizer is AdamW (Douillard et al. 2023, sec. 2). Keep
    one per client for the whole run: DiLoCo does not reset inner optimizer
    state between rounds. Decay skips 1-D tensors (norm scales and biases)
    because pulling a LayerNorm gain towards 0 only fights the normalisation.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for p in params if p.dim() >= 2],
            "weight_decay": defaults.weight_decay,
        },
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=defaults.lr, betas=defaults.betas)


def train_step(
    model: CharTransformer,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor],
    grad_clip_norm: float,
) -> torch.Tensor:
    """One inner step on `batch` = (inputs, targets); returns the detached loss.

    `batch` must already be on the model's device. The loss stays a tensor
    so a CUDA caller is not forced to synchronise every step; call `.item()`
    only when logging.
    """
    model.train()
    inputs, targets = batch
    loss = model.loss(inputs, targets)
    optimizer.zero_grad(set_to_none=True)
    torch.autograd.backward(loss)
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(
    model: CharTransformer,
    data: torch.Tensor,
    batch_size: int,
    context: int,
    num_batches: int,
    seed: int,
) -> float:
    """Mean next-byte cross-entropy (nats) on fixed windows of `data`.

    The windows come from a generator seeded with `seed`, so every client and
    every round scores the same text and losses are comparable. The model is
    put in eval mode (no dropout) and restored to its previous mode after.
    Cost is `num_batches` forward passes, about a third of a train step each.

    Raises:
        ConfigError: `num_batches` < 1, or `sample_batch`'s argument errors.
    """
    if num_batches < 1:
        raise ConfigError(f"num_batches={num_batches!r} is invalid: expected >= 1")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        # Summed on the device: one synchronisation at the end, not per batch.
        total = torch.zeros((), device=device)
        for _ in range(num_batches):
            inputs, targets = sample_batch(data, batch_size, context, generator)
            total += model.loss(inputs.to(device), targets.to(device))
    finally:
        model.train(was_training)
    return float(total.item()) / num_batches

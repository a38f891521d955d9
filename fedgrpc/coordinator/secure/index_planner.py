"""The shared index set of sparse secure rounds, and the guard that falls back to dense.

Masks make a sparse vector dense, so with `secagg_density` < 1 every client
masks and sends values at the *same* k = ceil(density · d) positions, which
the coordinator announces in the signed SecAggRoundSetup (DESIGN.md step 2):
`compress.shared_index.choose_index_set` over a ranking of the coordinates,
top-(1 - ε)k of it plus ε·k random positions drawn from the round's nonce
(public, fresh per round, already signed into the setup's session id). The
set depends only on coordinator state and that seed, so it is the same for
every client and leaks no client's support.

The ranking is the outer optimizer's momentum buffer (Nesterov), which is
where the global model is moving. FedAvg and SparseLoCo keep no momentum:
there it is |sum of codes| of the last *applied* round (same order as
|mean|, one positive scale per round), at that round's positions. Either
way a coordinate never sent has rank 0 and is reached only by the random
part: the set "freezes" (`compress.shared_index`'s docstring), which is why
`optim.divergence.DivergenceGuard` watches every sparse-mode round's masked
mean. When it trips, the round is voided (weights unchanged), the outer
momentum and the FedAvg ranking are reset, and the next `fallback_rounds`
rounds are announced dense (every coordinate, the safe default). The
first setup after a trip, and only that one, also says `reset_residuals`:
its participants zero their error-feedback residuals before folding in
that round's pseudo-gradient, so the dense round does not flush every
stale residual at once (the guard's docstring measures the damage). A
client absent from that round keeps its residual; the fixed `secagg_clip`
bounds its flush per coordinate.

Not done here: the guard's loss rule wants the global weights' loss (the
first inner step's), which does not travel on the wire yet (the header's
train_loss is the mean over H steps, which the guard's docstring shows
misses divergence), so only the norm rule runs. The positions travel
gap-coded (`compress.shared_index.encode_index_set`, ~9 bits per position
at 1 %, ~5 at 10 %) inside the one setup message, which must fit a chunk:
a set whose *coded* bytes, beside the participants, do not (at 1 MiB
chunks and 32 clients, measured: ~930k positions at 1 %, so models up to
~93M parameters; ~1.75M at 10 %, ~17.5M parameters; raw uint64 stopped
at 130k positions) is announced dense, with a warning, until the setup
can travel in chunks.

With `secagg_index_rule = "chunk_norm"` the ranking is instead the
clients' own: every push appends one code per chunk of `secagg_index_chunk`
coordinates, the RMS of that client's residual after its send, and the
masks leave only their sum, which `judge` keeps (clamped) for the next
round's `compress.chunk_norms.choose_chunk_set`. Sent chunks come back near
zero and unsent ones grow, so the set rotates instead of freezing. The sum
is kept only from applied rounds, and forgotten on a guard trip (the
residuals it measured are reset); without one the set is all random, as
in the first round.

With `secagg_index_rule = "residual_age"` the ranking is
`compress.residual_age`: the coordinator's own record, from the applied
rounds' unmasked means, of each coordinate's last-seen rate and the rounds
since it was sent, so the set rotates (loud coordinates more often). It
needs nothing from the clients beyond the means, so it also runs under
distributed DP (post-processing of the noised sum), and it is forgotten on
a guard trip like the momentum.

Cost: choosing the set is O(d) with two d-sized float32 temporaries
(kthvalue on 10M coordinates: ~0.1 s), and coding it O(k) (1M positions:
~50 ms), so both run on a worker thread as soon as a round opens, in
parallel with the setup's quiet period; the runtime keys the round only
once it is ready. Not thread-safe otherwise: driven from the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import torch

from fedgrpc.compress.chunk_norms import choose_chunk_set, chunk_scores, num_chunks
from fedgrpc.compress.residual_age import ResidualAge
from fedgrpc.compress.shared_index import (
    choose_index_set,
    encode_index_set,
    shared_index_k,
)
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import OpenRound, Outcome
from fedgrpc.log import get_logger
from fedgrpc.optim.divergence import DivergenceGuard, GuardConfig, GuardVerdict
from fedgrpc.secagg import AggregateResult
from fedgrpc.wire.secagg import SecureRoundSetup

log = get_logger(__name__)
PARTICIPANT_BYTES = 96
"""Generous bound on one participant's entry in the setup (id, key, framing)."""


@dataclass(frozen=True, slots=True)
class _AppliedSum:
    """A round's sum of codes, kept to rank the next set when there is no momentum."""

    round_id: int
    positions: np.ndarray | None
    total: np.ndarray

    def ranking(self, num_coordinates: int) -> torch.Tensor:
        """|sum of codes| per coordinate, 0 where nothing was sent (float32, d)."""
        magnitude = torch.from_numpy(np.abs(self.total).astype(np.float32))
        if self.positions is None:
            return magnitude
        ranking = torch.zeros(num_coordinates)
        ranking[torch.from_numpy(self.positions.astype(np.int64))] = magnitude
        return ranking


class SharedIndexPlanner:
    """Chooses each secure round's positions and runs the guard (module docstring)."""

    def __init__(
        self,
        config: CoordinatorConfig,
        engine: RoundEngine,
        guard: GuardConfig | None = None,
    ) -> None:
        """Inert (every round dense, no guard) unless `secagg_density` < 1."""
        self.enabled = config.secagg_density < 1
        self.density = config.secagg_density
        self.epsilon = config.secagg_random_fraction
        self.chunk = (
            config.secagg_index_chunk if config.secagg_index_rule == "chunk_norm" else 0
        )
        """C of the chunk-norm tail; 0: momentum ranking, no tail."""
        self.by_age = config.secagg_index_rule == "residual_age"
        self._age: ResidualAge | None = None
        """The "residual_age" rule's record of applied rounds (None: none yet)."""
        self._scores: _ChunkScores | None = None
        self._chunk_bytes = config.chunk_bytes
        self.engine = engine
        self.guard = DivergenceGuard(guard)
        self.dense_fallbacks = 0
        """Rounds announced dense because the guard tripped (for status, tests)."""
        self._round: int | None = None
        self._task: asyncio.Future[_ChosenSet] | None = None
        self._applied: _AppliedSum | None = None
        self._reset_pending = False

    @property
    def trips(self) -> int:
        """Times the guard refused a round."""
        return self.guard.trips

    def ready(self, current: OpenRound) -> bool:
        """Whether `current`'s positions are known; starts choosing them if not.

        The choice runs on a worker thread; the runtime's ticker asks again.
        """
        if not self.enabled:
            return True
        if self._round != current.round_id:
            self._round = current.round_id
            self._task = self._start(current)
        return self._task is None or self._task.done()

    def positions(self, current: OpenRound) -> np.ndarray | None:
        """`current`'s sorted uint64 positions, or None (dense). Call after `ready`.

        A failed choice (NaN momentum, say) announces dense rather than
        stalling the round: dense is always correct, only larger.
        """
        task = self._task
        if not self.enabled or task is None or self._round != current.round_id:
            return None
        try:
            chosen = task.result()
        except Exception as exc:  # a broken ranking must not strand the round
            log.error("secagg_index_set_failed", round=current.round_id, exc_info=exc)
            return None
        if not self._fits(current, chosen):
            return None
        return chosen.positions

    def coded(self, positions: np.ndarray | None) -> bytes:
        """`positions` gap-coded for the setup; b"" when dense.

        The bytes coded on the worker thread when `positions` is this
        round's chosen set; others (a test's or bench's `index_set`) are
        coded by `SecureRoundSetup` itself.
        """
        task = self._task
        if positions is None or task is None or not task.done():
            return b""
        if task.cancelled() or task.exception() is not None:
            return b""
        chosen = task.result()
        return chosen.coded if chosen.positions is positions else b""

    def norm_tail(self, num_coordinates: int) -> tuple[int, int]:
        """(C, ceil(d / C)) for every setup with the chunk-norm rule, else (0, 0).

        Dense fallback rounds carry the tail too: the round after them needs
        to know where the residuals wait.
        """
        if not self.enabled or not self.chunk:
            return 0, 0
        return self.chunk, num_chunks(num_coordinates, self.chunk)

    def take_residual_reset(self, current: OpenRound) -> bool:
        """Whether `current`'s setup says `reset_residuals`; True once per trip.

        Call when the setup is built. The flag then goes with that setup
        only: a later reset would throw away the residual of rounds that
        are healthy again.
        """
        pending, self._reset_pending = self._reset_pending, False
        if pending:
            log.info("secagg_residual_reset_announced", round=current.round_id,
                     trips=self.trips)  # fmt: skip
        return pending

    def _fits(self, current: OpenRound, chosen: _ChosenSet) -> bool:
        """Whether the coded set fits the one setup message (<= one chunk).

        Measured on the actual coded bytes: their size per position depends
        on the set's spread, which no count estimate knows. Beside them the
        setup carries every participant (a subset of the clients connected
        now); its fixed fields (~200 bytes) fit the message limit's framing
        margin above `chunk_bytes`. Too large: warn and announce dense.
        """
        participants = len(self.engine.registry.connected())
        limit = self._chunk_bytes - PARTICIPANT_BYTES * participants
        if len(chosen.coded) <= limit:
            return True
        log.warning("secagg_index_set_too_large", round=current.round_id,
                    positions=chosen.positions.size, bytes=len(chosen.coded),
                    max_bytes=max(0, limit))  # fmt: skip
        return False

    def _start(self, current: OpenRound) -> asyncio.Future[_ChosenSet] | None:
        """The worker-thread choice of `current`'s set, or None when it is dense."""
        if self.guard.dense_now:
            self.dense_fallbacks += 1
            log.info("secagg_dense_fallback", round=current.round_id,
                     reason="divergence_guard", trips=self.trips)  # fmt: skip
            return None
        d = self.engine.model.require_spec().num_coordinates
        k = shared_index_k(self.density, d)
        if k >= d:
            return None
        ranking: _Ranking
        if self.chunk:
            ranking = self._scores
        elif self.by_age:
            ranking = self._age
        else:
            ranking = self._ranking_source()
        seed = current.nonce
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(None, _choose, ranking, d, k, self.epsilon, seed)

    def _ranking_source(self) -> torch.Tensor | _AppliedSum | None:
        """The live momentum buffer, else the last applied round's sum, else none.

        The buffer is read on the worker thread: safe, since the outer step
        that writes it needs this round's masked sum, so cannot run before.
        """
        buffer = self.engine.model.optimizer.state_dict().get("momentum_buffer")
        if isinstance(buffer, torch.Tensor):
            return buffer
        applied = self._applied
        if applied is not None and any(
            r.round_id == applied.round_id and r.outcome is Outcome.APPLIED
            for r in self.engine.history
        ):
            return applied
        return None

    def judge(
        self, current: OpenRound, announce: SecureRoundSetup, result: AggregateResult
    ) -> GuardVerdict | None:
        """Run the guard on a recovered round; void it if the guard trips.

        Call after the sum is installed and before the engine applies it. The
        norm is that of the masked mean, taken from the exact sum of codes.
        """
        if not self.enabled:
            return None
        survivors = max(1, len(result.survivors))
        code_step = announce.scale.scale
        values = result.total[: announce.num_positions]  # the rest: chunk norms
        norm = code_step * float(np.linalg.norm(values)) / survivors
        verdict = self.guard.observe(norm)
        if verdict.apply:
            if announce.norm_tail:
                tail = result.total[announce.num_positions :]
                scores = chunk_scores(tail, survivors, announce.scale.qmax)
                self._scores = _ChunkScores(announce.norm_chunk, scores)
            if self.by_age:
                values = result.total[: announce.num_positions]
                self._record_age(announce, values, code_step / survivors)
            elif self.engine.model.optimizer.name != "nesterov":
                self._applied = _AppliedSum(
                    current.round_id, announce.positions, result.total
                )
            return verdict
        self._reset_momentum()
        self._reset_pending = verdict.reset_residuals
        current.void_reason = (
            f"divergence guard ({verdict.reason}): the masked mean's norm "
            f"{norm:.3g} is out of line with recent rounds; weights unchanged, "
            f"outer momentum reset, client residuals reset next round, the next "
            f"{self.guard.config.fallback_rounds} round(s) mask every coordinate "
            "(secagg_density applies again after)"
        )
        log.warning("secagg_guard_tripped", round=current.round_id,
                    reason=verdict.reason, norm=norm, trips=self.trips,
                    dense_rounds=self.guard.config.fallback_rounds)  # fmt: skip
        return verdict

    def _record_age(
        self, announce: SecureRoundSetup, codes: np.ndarray, step: float
    ) -> None:
        """Fold an applied round's mean (`codes` x `step`) into the residual age."""
        if self._age is None:  # the spec, so d, is fixed once a client joined
            self._age = ResidualAge(self.engine.model.require_spec().num_coordinates)
        mean = torch.from_numpy(codes.astype(np.float32)).mul_(step)
        positions = announce.positions
        sent = (
            None if positions is None else torch.from_numpy(positions.astype(np.int64))
        )
        self._age.record(sent, mean)

    def _reset_momentum(self) -> None:
        """Zero the outer momentum (it holds the burst and ranks the next set)."""
        self._applied = self._scores = self._age = None
        optimizer = self.engine.model.optimizer
        state = optimizer.state_dict()
        if "momentum_buffer" in state:
            optimizer.load_state_dict(
                {key: v for key, v in state.items() if key != "momentum_buffer"}
            )


@dataclass(frozen=True, slots=True)
class _ChunkScores:
    """The last applied round's clamped chunk-norm sum: the next set's ranking."""

    chunk: int
    scores: np.ndarray


@dataclass(frozen=True, slots=True)
class _ChosenSet:
    """A round's positions and their coded bytes, both made on the worker thread."""

    positions: np.ndarray
    """Sorted uint64."""
    coded: bytes
    """`encode_index_set(positions)`: what the setup carries, and what must fit."""


_Ranking = torch.Tensor | _AppliedSum | _ChunkScores | ResidualAge | None
"""What a set is chosen from: see `SharedIndexPlanner._start`."""


def _choose(
    ranking: _Ranking,
    num_coordinates: int,
    k: int,
    epsilon: float,
    seed: bytes,
) -> _ChosenSet:
    """The k positions, sorted, and coded (worker thread; pure given its inputs)."""
    if isinstance(ranking, _ChunkScores):
        chosen = choose_chunk_set(ranking.scores, ranking.chunk, num_coordinates,
                                  k, epsilon, seed)  # fmt: skip
        return _ChosenSet(chosen.numpy().astype(np.uint64), encode_index_set(chosen))
    if isinstance(ranking, _AppliedSum):
        ranking = ranking.ranking(num_coordinates)
    elif isinstance(ranking, ResidualAge):
        ranking = ranking.scores()
    elif ranking is None:  # nothing applied yet (or just reset): all random
        ranking = torch.zeros(num_coordinates)
    positions = choose_index_set(ranking, k, epsilon, seed)
    return _ChosenSet(positions.numpy().astype(np.uint64), encode_index_set(positions))

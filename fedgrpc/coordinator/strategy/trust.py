"""Trust scores: each client's standing from how its updates relate to the aggregate.

The Trust stage of the round pipeline (DESIGN.md). After the Aggregator made
round r's aggregate g from the spool, `measure_agreement` gives every update
uᵢ its distance dᵢ = ‖uᵢ - g‖ to the aggregate and its direction: peerᵢ,
the median of its cosines with the other updates (the cosine with g itself
is biased towards agreement, since g contains uᵢ; see `aggregate.agreement`).
Both are read *relative to the round*, because what an honest update looks
like depends on the model, the data and the round (non-IID clients' cosines
can be 0.1):

    scale    m_d = median_i dᵢ,   m_p = median_i peerᵢ
    distance credit  Dᵢ = min(1, (κ · m_d / dᵢ)²)         κ = DISTANCE_TOLERANCE = 2
    direction credit Cᵢ = clip(peerᵢ / (λ · m_p), 0, 1)  λ = DIRECTION_TOLERANCE = 0.5
                     (Cᵢ = 1 for all when m_p <= 0: the round has no direction)
    copy credit      Kᵢ = 0 if closestᵢ >= COPY_COSINE else 1   COPY_COSINE = 0.9999
    round score      rᵢ = Cᵢ · Dᵢ · Kᵢ                   in [0, 1]
    trust score      sᵢ ← decay · sᵢ + (1 - decay) · rᵢ  (sᵢ = 1 at first)

So an update up to twice the median distance, pointing at least half as
well as the median one, scores 1; a sign-flipped update (peer < 0) scores 0;
one scaled 10x scores (2/10)² = 0.04 (the square makes scaling cost what
its energy does). closestᵢ is the update's largest cosine with any other
update: two clients training on their own data and batches never send the
same vector, colluders do (ALIE and IPM as published, Baruch et al. 2019 and
Xie et al. 2020, give all attackers one vector, sitting inside the honest
spread where C and D cannot see it; FoolsGold, Fung et al. 2020, scores
clients by the same pairwise similarity). Both copies score 0. Quantised
copies stay above 0.9999 (int8 noise costs ~1e-5 of cosine); a colluder
that adds noise of its own escapes it, and pays with a weaker attack.
With fewer than `MIN_SCORED_UPDATES` updates a round says nothing (two
updates are always equally far from their median) and no score moves.
The median scale means a minority of attackers cannot move the yardstick;
like the robust rules, it assumes honest clients are a majority.

Standing (`TrustState`), decided after each scored round:

- `trusted`: sᵢ >= `soft_threshold`; weight factor 1.
- `soft` (soft quarantine): `hard_threshold` <= sᵢ < `soft_threshold`; its
  aggregation weight is multiplied by sᵢ / soft_threshold
  (`ClientRecord.weight_factor`, which the weighting stage applies).
- `quarantined` (hard quarantine): sᵢ < `hard_threshold`. Excluded through
  the one exclusion mechanism (`ClientRecord.excluded_until_round`) for
  K · 2^(offences - 1) rounds (K = `quarantine_rounds`, at most 64 K): a
  repeat offender stays out longer each time.
- `probation` (readmission): once its exclusion ends the client may push
  again, starting at sᵢ = (soft + hard) / 2, i.e. soft-quarantined, for its
  next K scored rounds; it leaves probation by scoring (`trusted` or `soft`),
  or goes back to quarantine, for twice as long, if sᵢ drops below hard.

Plain Python and numpy, no gRPC: `measure` runs on the engine's apply thread
(it only stores the measurement), `round_closed` on the event loop, where it
updates the registry, so the two never race. The state is checkpointed
exactly (`state_dict` / `load_state_dict`; floats survive JSON as repr).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

import numpy as np
import torch

from fedgrpc.aggregate.agreement import Agreement, measure_agreement
from fedgrpc.aggregate.blockwise import as_spool
from fedgrpc.aggregate.stages import F64Array, HeldUpdates
from fedgrpc.config.robustness import TrustSettings
from fedgrpc.errors import ConfigError, FedGrpcError, WrongRoundError
from fedgrpc.log import get_logger

log = get_logger(__name__)

TrustState = Literal["trusted", "soft", "quarantined", "probation"]
"""A client's standing; see the module docstring."""
TRUST_STATES: tuple[TrustState, ...] = get_args(TrustState)
DISTANCE_TOLERANCE = 2.0
"""κ: full distance credit up to this many times the round's median distance."""
DIRECTION_TOLERANCE = 0.5
"""λ: full direction credit from this fraction of the round's median cosine."""
COPY_COSINE = 0.9999
"""Updates this close in direction to another one are copies and score 0."""
MIN_SCORED_UPDATES = 3
"""Rounds with fewer updates move no score: two are equidistant from their median."""
MAX_ESCALATION = 6
"""Quarantine length doubles per offence up to 2^6 x quarantine_rounds."""


@dataclass(slots=True)
class Standing:
    """One client's trust: its score and where it stands."""

    score: float = 1.0
    state: TrustState = "trusted"
    quarantined_until: int = 0
    """First round it may push again after a hard quarantine (0: never quarantined)."""
    probation_left: int = 0
    """Scored rounds it still has to pass on probation."""
    offences: int = 0
    """Hard quarantines so far (each one lasts twice the previous)."""
    first_quarantined_round: int = 0
    """Round whose score first put it in hard quarantine (0: never); kept so
    a report can say how soon an attacker was caught (`fedgrpc simulate`)."""
    last_round_score: float = 1.0
    """rᵢ of its last scored round (for status and logs)."""

    def weight_factor(self, settings: TrustSettings) -> float:
        """Its aggregation weight multiplier: min(1, sᵢ / soft_threshold)."""
        return min(1.0, self.score / settings.soft_threshold)


def round_scores(
    direction: F64Array, distance: F64Array, closest: F64Array | None = None
) -> F64Array:
    """rᵢ = Cᵢ · Dᵢ · Kᵢ for one round's updates (module docstring), vectorised.

    `direction`: each update's cosine with its peers (peerᵢ); `distance`:
    its distance to the aggregate; `closest`: its largest cosine with another
    update (closestᵢ; None: no copy check).
    """
    scale = float(np.median(distance))
    if scale > 0:
        far = np.maximum(distance, np.finfo(np.float64).tiny)
        dist_credit = np.minimum(1.0, (DISTANCE_TOLERANCE * scale / far) ** 2)
    else:  # at least half the updates equal the aggregate: only those are in line
        dist_credit = np.where(distance > 0, 0.0, 1.0)
    consensus = float(np.median(direction))
    if consensus > 0:
        dir_credit = np.clip(direction / (DIRECTION_TOLERANCE * consensus), 0.0, 1.0)
    else:
        dir_credit = np.ones_like(direction)
    scores: F64Array = dir_credit * dist_credit
    if closest is not None:
        scores = np.where(closest >= COPY_COSINE, 0.0, scores)
    # inf / inf (an overflowing update when most others overflow too): no credit.
    return np.nan_to_num(scores, nan=0.0)


class TrustedRecord(Protocol):
    """What trust writes in a client's record (`rounds.registry.ClientRecord`).

    Named structurally: the round engine imports the strategy stages, so
    they cannot import its records back.
    """

    weight_factor: float
    excluded_until_round: int
    exclusion_reason: str


class Records(Protocol):
    """Clients by id (`rounds.registry.ClientRegistry`)."""

    def get(self, client_id: str) -> TrustedRecord | None:
        """The record of `client_id`, or None once it is forgotten."""
        ...


class TrustBook:
    """Every client's `Standing`, updated once per scored round."""

    def __init__(self, settings: TrustSettings) -> None:
        self.settings = settings
        self.standings: dict[str, Standing] = {}
        self.quarantines = 0
        """Hard quarantines imposed over the run (a counter, checkpointed)."""
        self._pending: tuple[int, tuple[str, ...], Agreement] | None = None

    def standing(self, client_id: str) -> Standing:
        """`client_id`'s standing (a fresh, trusted one if it was never scored)."""
        return self.standings.get(client_id) or Standing()

    # -- apply thread ----------------------------------------------------------

    def measure(
        self,
        round_id: int,
        order: list[str],
        held: HeldUpdates,
        aggregate: torch.Tensor,
    ) -> None:
        """Measure round `round_id`'s updates against its aggregate (apply thread).

        `order` names the client of each spooled row (`OpenRound.commit_order`).
        Only stores the measurement: `round_closed` scores it on the event loop.
        Scores are advisory, so a measurement that fails (a spool read error)
        is logged and skipped: it must not cost the round its update.
        """
        self._pending = None
        try:
            spool = as_spool(held, "trust")
            if len(order) != spool.count:
                raise WrongRoundError(
                    f"{len(order)} committed clients but {spool.count} spooled updates"
                )
            agreement = measure_agreement(spool, aggregate)
        except (OSError, FedGrpcError) as exc:
            log.error("trust_measure_failed", round=round_id, error=str(exc))
            return
        self.observe(round_id, tuple(order), agreement)

    def observe(
        self, round_id: int, order: tuple[str, ...], agreement: Agreement
    ) -> None:
        """Keep round `round_id`'s measurement for `round_closed` (any thread)."""
        self._pending = (round_id, order, agreement)

    # -- event loop ------------------------------------------------------------

    def round_closed(self, round_id: int, registry: Records) -> None:
        """Score round `round_id` (if measured), readmit, write the registry."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == round_id:
            _, order, agreement = pending
            if len(order) >= MIN_SCORED_UPDATES:
                self._score(round_id, order, agreement, registry)
        self._readmit(round_id, registry)
        for client_id in [c for c in self.standings if registry.get(c) is None]:
            del self.standings[client_id]  # forgotten clients: ids are never reused

    def _score(
        self,
        round_id: int,
        order: tuple[str, ...],
        agreement: Agreement,
        registry: Records,
    ) -> None:
        decay = self.settings.decay
        scores = round_scores(
            agreement.peer_cosine, agreement.distance, agreement.closest_peer_cosine
        )
        for row, client_id in enumerate(order):
            standing = self.standings.setdefault(client_id, Standing())
            standing.last_round_score = float(scores[row])
            standing.score = decay * standing.score + (1 - decay) * float(scores[row])
            log.debug(
                "trust_scored", client=client_id, round=round_id,
                score=round(standing.score, 4),
                round_score=round(float(scores[row]), 4),
                cosine=round(float(agreement.cosine[row]), 4),
                peer_cosine=round(float(agreement.peer_cosine[row]), 4),
                closest_peer_cosine=round(float(agreement.closest_peer_cosine[row]), 6),
            )  # fmt: skip
            self._judge(round_id, client_id, standing, registry)

    def _judge(
        self,
        round_id: int,
        client_id: str,
        standing: Standing,
        registry: Records,
    ) -> None:
        """Move `standing` after a scored round and write its record."""
        settings, before = self.settings, standing.state
        if standing.score < settings.hard_threshold:
            self._quarantine(round_id, client_id, standing, registry)
            return
        if standing.state == "probation":
            standing.probation_left -= 1
        if standing.state != "probation" or standing.probation_left <= 0:
            soft = standing.score < settings.soft_threshold
            standing.state = "soft" if soft else "trusted"
            standing.probation_left = 0
        record = registry.get(client_id)
        if record is not None:
            record.weight_factor = standing.weight_factor(settings)
        if standing.state == "soft" and before != "soft":
            log.warning(
                "client_soft_quarantined", client=client_id, round=round_id,
                score=round(standing.score, 4),
                weight_factor=round(standing.weight_factor(settings), 4),
            )  # fmt: skip
        elif standing.state == "trusted" and before != "trusted":
            log.info("client_trusted", client=client_id, round=round_id,
                     score=round(standing.score, 4))  # fmt: skip

    def _quarantine(
        self,
        round_id: int,
        client_id: str,
        standing: Standing,
        registry: Records,
    ) -> None:
        """Hard quarantine: exclude `client_id` for K · 2^(offences - 1) rounds."""
        settings = self.settings
        standing.offences += 1
        standing.first_quarantined_round = standing.first_quarantined_round or round_id
        doublings = min(standing.offences - 1, MAX_ESCALATION)
        rounds = settings.quarantine_rounds << doublings
        standing.state, standing.probation_left = "quarantined", 0
        standing.quarantined_until = round_id + 1 + rounds
        self.quarantines += 1
        record = registry.get(client_id)
        if record is not None:
            _exclude(record, standing, settings)
        log.warning(
            "client_quarantined", client=client_id, round=round_id,
            score=round(standing.score, 4), until_round=standing.quarantined_until,
            rounds=rounds, offences=standing.offences,
        )  # fmt: skip

    def _readmit(self, round_id: int, registry: Records) -> None:
        """Put clients whose quarantine ends with the next round on probation."""
        settings = self.settings
        for client_id, standing in self.standings.items():
            if standing.state != "quarantined":
                continue
            if round_id + 1 < standing.quarantined_until:
                continue
            standing.state = "probation"
            standing.score = settings.probation_score
            standing.probation_left = settings.quarantine_rounds
            record = registry.get(client_id)
            if record is not None:
                record.weight_factor = standing.weight_factor(settings)
            log.info(
                "client_readmitted", client=client_id, round=round_id + 1,
                score=round(standing.score, 4),
                probation_rounds=standing.probation_left,
            )  # fmt: skip

    # -- checkpoint ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: every standing and the quarantine counter."""
        return {
            "quarantines": self.quarantines,
            "clients": {c: dataclasses.asdict(s) for c, s in self.standings.items()},
        }

    def load_state_dict(self, state: dict[str, Any], registry: Records) -> None:
        """Restore `state_dict`'s output and re-apply it to the registry's records.

        Quarantines are written back through the exclusion mechanism (the
        later end wins if something else excluded the client too), and each
        known client's weight factor is set again.

        Raises:
            ConfigError: a row names an unknown trust state.
        """
        self.quarantines = int(state.get("quarantines", 0))
        self.standings = {}
        for client_id, row in state.get("clients", {}).items():
            standing = Standing(**row)
            if standing.state not in TRUST_STATES:
                raise ConfigError(f"checkpointed trust state {standing.state!r}")
            record = registry.get(client_id)
            if record is None:
                continue
            self.standings[client_id] = standing
            record.weight_factor = standing.weight_factor(self.settings)
            if standing.state == "quarantined":
                _exclude(record, standing, self.settings)


def _exclude(
    record: TrustedRecord, standing: Standing, settings: TrustSettings
) -> None:
    """Write a hard quarantine into the record (the one exclusion mechanism)."""
    if standing.quarantined_until > record.excluded_until_round:
        record.excluded_until_round = standing.quarantined_until
        record.exclusion_reason = (
            f"hard quarantine: its trust score {standing.score:.3f} fell below "
            f"trust_hard_threshold = {settings.hard_threshold:g} (its updates "
            "disagreed with the round's robust aggregate)"
        )

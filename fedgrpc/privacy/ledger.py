"""The run's privacy budget: every noisy release it made, and the ε(δ) they cost.

Accounting is Google's `dp-accounting` (the library TensorFlow Privacy,
TFF and Opacus' own tests compare against), never arithmetic of ours: the
ledger only records *which* mechanism ran how often and asks the library
for ε. Two accountants, as the issue asks:

- `rdp`: Rényi DP of the (sub)sampled Gaussian (Mironov 2017; Mironov,
  Talwar and Zhang 2019), converted to (ε, δ) with the tighter conversion
  of Canonne, Kamath and Steinke 2020, both inside `dp_accounting.rdp`.
- `pld`: privacy loss distributions (Koskela et al. 2020; Doroshenko et
  al. 2022), tighter by ~10 % at the same noise, slower to compose.

What is recorded is a list of `Release`s, consecutive identical ones merged
into one entry with a count, so a 10,000-step DP-SGD run is one line and a
checkpoint restores the exact same ε: the ledger's state *is* that list and
ε is recomputed from it (`LedgerState`, JSON-able).

Sampling: `poisson` is the amplification the DP-SGD and DP-FedAvg analyses
assume (each record or client joins each step independently with
probability q); `fixed` (a uniformly random subset of fixed size, without
replacement) matches `clients_per_round`. A release with q = 1 is the plain
Gaussian mechanism.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from fedgrpc.errors import ConfigError, check_config
from fedgrpc.privacy._library import dp_accounting

AccountantName = Literal["rdp", "pld"]
ACCOUNTANTS: tuple[AccountantName, ...] = ("rdp", "pld")
Sampling = Literal["poisson", "fixed"]
Neighbouring = Literal["add_or_remove_one", "replace_one"]
NEIGHBOURINGS: tuple[Neighbouring, ...] = ("add_or_remove_one", "replace_one")

PLD_DISCRETIZATION = 1e-4
"""`value_discretization_interval` of the PLD accountant: the library's
default; its ε is a valid upper bound at any interval, finer only tightens."""


@dataclass(frozen=True, slots=True)
class Release:
    """`count` releases of the Gaussian mechanism with one set of parameters.

    noise_multiplier z: the noise's standard deviation over the L2
    sensitivity (z·S over S). sampling_rate q: probability that one unit
    (record or client) is in a release; for `fixed` sampling,
    `population` and `sample_size` say how many of how many.
    """

    noise_multiplier: float
    sampling_rate: float = 1.0
    count: int = 1
    sampling: Sampling = "poisson"
    population: int = 0
    """`fixed` sampling: units sampled from (0 for poisson)."""
    sample_size: int = 0
    """`fixed` sampling: units in each release (0 for poisson)."""

    def __post_init__(self) -> None:
        z, q = self.noise_multiplier, self.sampling_rate
        check_config(math.isfinite(z) and z > 0, "noise_multiplier", z, "finite > 0")
        check_config(0 < q <= 1, "sampling_rate", q, "in (0, 1]")
        check_config(self.count >= 1, "count", self.count, ">= 1")
        if self.sampling == "fixed":
            check_config(
                1 <= self.sample_size <= self.population,
                "sample_size",
                self.sample_size,
                f"in [1, population={self.population}]",
            )
        else:
            check_config(self.sampling == "poisson", "sampling", self.sampling,
                         "'poisson' or 'fixed'")  # fmt: skip

    def same_mechanism(self, other: Release) -> bool:
        """True if `other` differs from this release only in its count."""
        return (
            self.noise_multiplier == other.noise_multiplier
            and self.sampling_rate == other.sampling_rate
            and self.sampling == other.sampling
            and self.population == other.population
            and self.sample_size == other.sample_size
        )

    def dp_event(self) -> Any:
        """The `dp_accounting` event of one release (without the count)."""
        lib = dp_accounting()
        gaussian = lib.GaussianDpEvent(self.noise_multiplier)
        if self.sampling == "fixed":
            if self.sample_size == self.population:
                return gaussian
            return lib.SampledWithoutReplacementDpEvent(
                self.population, self.sample_size, gaussian
            )
        if self.sampling_rate >= 1.0:
            return gaussian
        return lib.PoissonSampledDpEvent(self.sampling_rate, gaussian)


@dataclass(frozen=True, slots=True)
class LedgerState:
    """What a checkpoint keeps of a ledger: enough to recompute ε exactly."""

    accountant: AccountantName
    neighbouring: Neighbouring
    releases: tuple[Release, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (`from_json` reads it back)."""
        return {
            "accountant": self.accountant,
            "neighbouring": self.neighbouring,
            "releases": [asdict(r) for r in self.releases],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LedgerState:
        """Read `to_json`'s dict.

        Raises:
            ConfigError: a field is missing or out of range.
        """
        try:
            releases = tuple(Release(**r) for r in raw["releases"])
            return cls(raw["accountant"], raw["neighbouring"], releases)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"privacy ledger state is malformed: {exc}") from exc


class PrivacyLedger:
    """The releases a run made and the ε(δ) they cost, by `dp-accounting`.

    Not thread-safe: the coordinator touches it from its apply path only,
    a client from its training loop only.
    """

    def __init__(
        self,
        accountant: AccountantName = "rdp",
        neighbouring: Neighbouring = "add_or_remove_one",
        releases: Iterable[Release] = (),
    ) -> None:
        """Start empty (or from `releases`, in order).

        Raises:
            ConfigError: an unknown accountant or neighbouring relation, or
                dp-accounting is not installed.
        """
        check_config(accountant in ACCOUNTANTS, "dp_accountant", accountant,
                     f"one of {list(ACCOUNTANTS)}")  # fmt: skip
        check_config(neighbouring in NEIGHBOURINGS, "neighbouring", neighbouring,
                     f"one of {list(NEIGHBOURINGS)}")  # fmt: skip
        dp_accounting()  # fail now, not at the first round
        self.accountant: AccountantName = accountant
        self.neighbouring: Neighbouring = neighbouring
        self._releases: list[Release] = []
        for release in releases:
            self.record(release)

    @classmethod
    def restore(cls, state: LedgerState) -> PrivacyLedger:
        """The ledger a checkpoint saved (same releases, so the same ε)."""
        return cls(state.accountant, state.neighbouring, state.releases)

    def state(self) -> LedgerState:
        """What to checkpoint."""
        return LedgerState(self.accountant, self.neighbouring, tuple(self._releases))

    @property
    def releases(self) -> Sequence[Release]:
        """Every release so far, identical neighbours merged."""
        return tuple(self._releases)

    @property
    def spent_anything(self) -> bool:
        """True once one release was recorded."""
        return bool(self._releases)

    def record(self, release: Release) -> None:
        """Add a release (merged into the last entry when only counts differ)."""
        if self._releases and self._releases[-1].same_mechanism(release):
            last = self._releases[-1]
            merged = Release(
                last.noise_multiplier,
                last.sampling_rate,
                last.count + release.count,
                last.sampling,
                last.population,
                last.sample_size,
            )
            self._releases[-1] = merged
        else:
            self._releases.append(release)

    def epsilon(self, delta: float) -> float:
        """ε at `delta` of every release so far (0.0 before the first)."""
        return self._epsilon(self._releases, delta)

    def epsilon_after(self, release: Release, delta: float) -> float:
        """ε at `delta` if `release` were recorded next (the ledger is unchanged).

        What the coordinator asks before it applies a round under `max_epsilon`.
        """
        return self._epsilon([*self._releases, release], delta)

    def _epsilon(self, releases: Sequence[Release], delta: float) -> float:
        check_config(0 < delta < 1, "delta", delta, "in (0, 1)")
        if not releases:
            return 0.0
        accountant = make_accountant(self.accountant, self.neighbouring)
        for release in releases:
            accountant.compose(release.dp_event(), release.count)
        return float(accountant.get_epsilon(delta))


def make_accountant(name: AccountantName, neighbouring: Neighbouring) -> Any:
    """A fresh `dp_accounting` accountant of kind `name`."""
    lib = dp_accounting()
    relation = (
        lib.NeighboringRelation.REPLACE_ONE
        if neighbouring == "replace_one"
        else lib.NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    if name == "pld":
        return lib.pld.PLDAccountant(
            relation, value_discretization_interval=PLD_DISCRETIZATION
        )
    return lib.rdp.RdpAccountant(neighboring_relation=relation)


def noise_for_budget(
    target_epsilon: float,
    delta: float,
    release: Release,
    accountant: AccountantName = "rdp",
    neighbouring: Neighbouring = "add_or_remove_one",
    max_noise_multiplier: float = 1e3,
) -> float:
    """The least noise multiplier at which `release` (count included) costs ε ≤ target.

    `release.noise_multiplier` is ignored; `dp_accounting`'s
    `calibrate_dp_mechanism` searches it (bisection on the accountant).

    Raises:
        ConfigError: no multiplier up to `max_noise_multiplier` reaches the
            target (a target that small with that many releases is not a
            setting anyone can train with), or the inputs are out of range.
    """
    check_config(math.isfinite(target_epsilon) and target_epsilon > 0,
                 "target_epsilon", target_epsilon, "finite > 0")  # fmt: skip
    check_config(0 < delta < 1, "delta", delta, "in (0, 1)")
    lib = dp_accounting()

    def event(z: float) -> Any:
        one = Release(z, release.sampling_rate, 1, release.sampling,
                      release.population, release.sample_size)  # fmt: skip
        return lib.SelfComposedDpEvent(one.dp_event(), release.count)

    def fresh() -> Any:
        return make_accountant(accountant, neighbouring)

    ceiling = make_accountant("rdp", neighbouring)
    ceiling.compose(event(max_noise_multiplier))
    if ceiling.get_epsilon(delta) > target_epsilon:
        raise ConfigError(
            f"target ε={target_epsilon:g} at δ={delta:g} is out of reach: even noise "
            f"multiplier {max_noise_multiplier:g} spends more over {release.count} "
            "releases; raise the target or release less often"
        )
    # RDP first: cheap at any multiplier, and its ε bounds PLD's from above,
    # so its answer brackets PLD's search from the top (PLD at very small
    # multipliers needs gigabytes of loss grid, so it never searches there).
    rdp_z = float(
        lib.calibrate_dp_mechanism(
            lambda: make_accountant("rdp", neighbouring),
            event,
            target_epsilon,
            delta,
            bracket_interval=lib.ExplicitBracketInterval(1e-2, max_noise_multiplier),
        )
    )
    if accountant == "rdp":
        return rdp_z
    lower = rdp_z / 2
    probe = fresh()
    probe.compose(event(lower))
    if probe.get_epsilon(delta) <= target_epsilon:  # PLD is never this much tighter
        return lower
    found = lib.calibrate_dp_mechanism(
        fresh, event, target_epsilon, delta,
        bracket_interval=lib.ExplicitBracketInterval(lower, rdp_z),
    )  # fmt: skip
    return float(found)

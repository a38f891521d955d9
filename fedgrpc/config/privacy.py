"""Client-level differential privacy of the run: a section of `CoordinatorConfig`.

A mixin so TOML keys and `--flags` stay flat (`privacy = "central"`,
`--privacy central`); `CoordinatorConfig` inherits it and calls
`_check_privacy` from its `__post_init__`. Not slotted: slotted dataclasses
cannot be combined as several bases.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models"): each client's update is clipped to L2 norm S and
Gaussian noise of standard deviation z·S is added to the sum, so one
client's whole contribution to a round is hidden. Where the noise is added:

- `central`: the coordinator clips every update and adds the noise after
  aggregation. The coordinator sees every clipped update: it must be trusted.
- `distributed`: each client clips its own update and adds its share of
  discrete Gaussian noise in the secure-aggregation ring before masking
  (Kairouz, Liu and Steinke 2021), so the coordinator only ever sees a
  noised sum. Needs `secure_aggregation`.

ε(δ) is accounted by `fedgrpc.privacy.PrivacyLedger` (`dp-accounting`).
Record-level DP-SGD inside a client is the client's setting
(`ClientConfig`), not this section's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fedgrpc.errors import check_config as _check

PrivacyMode = Literal["off", "central", "distributed"]
PRIVACY_MODES: tuple[PrivacyMode, ...] = ("off", "central", "distributed")
DP_ACCOUNTANTS = ("rdp", "pld")
DEFAULT_ROUNDING_BETA = math.exp(-0.5)
"""β of conditional rounding in Kairouz, Liu and Steinke 2021's experiments."""


@dataclass(frozen=True, kw_only=True)
class PrivacySettings:
    """Clip, noise and budget of client-level DP (off by default)."""

    privacy: PrivacyMode = "off"
    """`off`, `central` (the coordinator clips and noises) or `distributed`
    (clients noise in the secure ring; needs `secure_aggregation`)."""
    dp_clip_norm: float = 0.0
    """S: every client update is clipped to this L2 norm before it counts
    (the sensitivity of the round's sum). Required (> 0) when privacy is on."""
    dp_noise_multiplier: float = 0.0
    """z: the noise added to the sum has standard deviation z·S. Set this or
    `dp_target_epsilon` (then z is calibrated for `max_rounds` rounds)."""
    dp_target_epsilon: float = 0.0
    """ε the run should reach after `max_rounds` rounds at `dp_delta`: z is
    calibrated at start by `dp-accounting` (needs `max_rounds` > 0)."""
    dp_delta: float = 1e-5
    """δ of every ε the run reports (and of `max_epsilon`)."""
    max_epsilon: float = 0.0
    """Budget: the coordinator does not apply a round that would take ε(δ)
    past it, says so, and finishes the run. 0: no limit (ε is still reported)."""
    dp_accountant: Literal["rdp", "pld"] = "rdp"
    """`rdp` (Rényi DP; fast) or `pld` (privacy loss distributions; tighter)."""
    dp_adaptive_clip_quantile: float = 0.0
    """gamma in (0, 1): adaptive clipping (Andrew et al. 2021) moves dp_clip_norm
    each round toward the gamma-quantile of the update norms (0.5: the median),
    starting from dp_clip_norm. 0: S stays fixed. Central privacy only."""
    dp_clip_learning_rate: float = 0.2
    """η_C of adaptive clipping's geometric step S ← S·exp(-η_C (b̃ - gamma))
    (0.2: the paper's choice)."""
    dp_clip_count_noise: float = 0.0
    """sigma_b: standard deviation (in clients) of the noise on adaptive
    clipping's count of unclipped updates; it shares the noise budget z, so
    it must exceed z / 2 (the paper suggests clients per round / 20).
    Required (> 0) with dp_adaptive_clip_quantile."""
    trusted_coordinator: bool = True
    """False declares the coordinator untrusted: it must never see an
    un-noised update or sum, so only `privacy = "distributed"` is allowed."""
    dp_min_survivors: int = 0
    """`distributed`: each client's noise share is sized so that this many
    shares reach the configured noise; a masked round with fewer survivors
    is aborted before its sum is unmasked. 0: min_clients (at least 3)."""
    dp_rounding_beta: float = DEFAULT_ROUNDING_BETA
    """`distributed`: β of conditional randomized rounding (Kairouz et al.
    2021): clients redraw a rounding whose norm exceeds the bound, which
    holds with probability >= 1 - β. Smaller β, larger bound (more noise);
    0: the deterministic bound ‖x‖ + √d."""

    def _check_privacy(self) -> None:
        """Refuse settings under which the promised ε cannot hold.

        Raises:
            ConfigError: naming the setting (and the one it conflicts with).
        """
        _check(self.privacy in PRIVACY_MODES, "privacy", self.privacy,
               f"one of {list(PRIVACY_MODES)}")  # fmt: skip
        _check(self.dp_accountant in DP_ACCOUNTANTS, "dp_accountant",
               self.dp_accountant, f"one of {list(DP_ACCOUNTANTS)}")  # fmt: skip
        _check(0 < self.dp_delta < 1, "dp_delta", self.dp_delta, "in (0, 1)")
        for name in ("dp_clip_norm", "dp_noise_multiplier", "dp_target_epsilon",
                     "max_epsilon", "dp_clip_learning_rate",
                     "dp_clip_count_noise"):  # fmt: skip
            value = getattr(self, name)
            _check(math.isfinite(value) and value >= 0, name, value, "finite >= 0")
        self._check_adaptive_clipping()
        if self.privacy == "off":
            _check(self.trusted_coordinator, "trusted_coordinator", False,
                   "true unless privacy = 'distributed' (an untrusted coordinator "
                   "must never see an un-noised sum)")  # fmt: skip
            return
        _check(self.dp_clip_norm > 0, "dp_clip_norm", self.dp_clip_norm,
               f"> 0 when privacy = {self.privacy!r}")  # fmt: skip
        _check((self.dp_noise_multiplier > 0) != (self.dp_target_epsilon > 0),
               "dp_noise_multiplier", self.dp_noise_multiplier,
               "> 0, or dp_target_epsilon > 0 instead (exactly one of the two) "
               f"when privacy = {self.privacy!r}")  # fmt: skip
        _check(self.privacy != "central" or self.trusted_coordinator, "privacy",
               self.privacy, "'distributed' when trusted_coordinator = false: central "
               "noise means the coordinator sees every clipped update")  # fmt: skip

    def _check_adaptive_clipping(self) -> None:
        """Adaptive clipping: a quantile in (0, 1), its rate and its count noise.

        Raises:
            ConfigError: naming the dp_* setting.
        """
        quantile = self.dp_adaptive_clip_quantile
        _check(0 <= quantile < 1, "dp_adaptive_clip_quantile", quantile,
               "in (0, 1), or 0 for a fixed dp_clip_norm")  # fmt: skip
        if quantile == 0:
            return
        _check(self.privacy == "central", "dp_adaptive_clip_quantile", quantile,
               "0 unless privacy = 'central' (the coordinator counts clipped "
               "updates)")  # fmt: skip
        rate = self.dp_clip_learning_rate
        _check(rate > 0, "dp_clip_learning_rate", rate,
               "> 0 with dp_adaptive_clip_quantile")  # fmt: skip
        _check(self.dp_clip_count_noise > 0, "dp_clip_count_noise",
               self.dp_clip_count_noise, "> 0 with dp_adaptive_clip_quantile (the "
               "count of clipped updates is released too; Andrew et al. suggest "
               "clients per round / 20)")  # fmt: skip

    def _check_distributed_privacy(
        self, secure_aggregation: bool, max_clients: int
    ) -> None:
        """`distributed` noise lives in the secure ring: refuse it without one.

        Called by `CoordinatorConfig.__post_init__`, which knows both settings.

        Raises:
            ConfigError: naming both conflicting settings.
        """
        _check(self.dp_min_survivors == 0 or self.dp_min_survivors >= 3,
               "dp_min_survivors", self.dp_min_survivors,
               "0 (min_clients) or >= 3 (a masked round has at least 3)")  # fmt: skip
        _check(0 <= self.dp_rounding_beta < 1, "dp_rounding_beta",
               self.dp_rounding_beta, "in [0, 1)")  # fmt: skip
        _check(self.dp_min_survivors <= max_clients, "dp_min_survivors",
               self.dp_min_survivors, f"<= max_clients ({max_clients}): a round "
               "with fewer survivors is never unmasked")  # fmt: skip
        if self.privacy != "distributed":
            return
        _check(secure_aggregation, "privacy", self.privacy,
               "'central' or 'off' when secure_aggregation = false: distributed "
               "noise is added by the clients inside the secure-aggregation ring, "
               "so set secure_aggregation = true")  # fmt: skip
        _check(self.dp_accountant == "rdp", "dp_accountant", self.dp_accountant,
               "'rdp' with privacy = 'distributed': the discrete mechanism's "
               "guarantee is a zCDP bound, which is exactly a Gaussian's RDP but "
               "not its privacy-loss distribution (pld)")  # fmt: skip

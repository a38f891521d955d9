"""Independent numpy references of the robust rules, written from the papers.

Whole-matrix float64 code with the papers' notation, deliberately unlike
`fedgrpc.aggregate` (no blocks, no Gram trick, no fused passes), so a
shared mistake is unlikely. ByzFL was tried as the reference: its wheel
imports scipy, torchvision, matplotlib and seaborn at `import byzfl`
(none is a dependency of ours), so it does not import with `--no-deps`.
"""

from __future__ import annotations

import numpy as np


def krum_scores(x: np.ndarray, f: int) -> np.ndarray:
    """Blanchard et al. 2017, Sec. 4: s(i) = Σ_{i→j} ‖Vᵢ - Vⱼ‖².

    i→j: the n - f - 2 vectors nearest to Vᵢ.
    """
    n = len(x)
    scores = np.empty(n)
    for i in range(n):
        dists = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i)
        scores[i] = sum(dists[: n - f - 2])
    return scores


def multi_krum(x: np.ndarray, f: int, m: int) -> np.ndarray:
    """Average of the m vectors of lowest Krum score (Multi-Krum, Sec. 5)."""
    chosen = np.argsort(krum_scores(x, f), kind="stable")[:m]
    mean: np.ndarray = x[chosen].mean(axis=0)
    return mean


def geometric_median(
    x: np.ndarray, iters: int, nu: float, ftol: float = 1e-6
) -> np.ndarray:
    """RFA's smoothed Weiszfeld (Pillutla et al. 2022, Alg. 2) with αᵢ = 1/n,
    started at the medoid (fedgrpc's start; the paper's is the mean)."""
    alpha = np.full(len(x), 1.0 / len(x))
    pairwise = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2)
    z = x[int(np.argmin(pairwise.sum(axis=1)))]

    def objective(z: np.ndarray) -> float:
        return float(alpha @ np.linalg.norm(x - z, axis=1))

    g = objective(z)
    for _ in range(iters):
        beta = alpha / np.maximum(nu, np.linalg.norm(x - z, axis=1))
        z = beta @ x / beta.sum()
        g_old, g = g, objective(z)
        if abs(g_old - g) <= ftol * g:
            break
    median: np.ndarray = z
    return median


def centered_clipping(
    x: np.ndarray, v: np.ndarray, tau: float | None, iters: int
) -> np.ndarray:
    """Karimireddy et al. 2021, eq. (CC): v ← v + (1/n) Σ (xᵢ - v) min(1, τ/‖xᵢ - v‖).

    τ None: each step's median of ‖xᵢ - v‖ (fedgrpc's documented default).
    """
    for _ in range(iters):
        diff = x - v
        norms = np.linalg.norm(diff, axis=1)
        radius = float(np.median(norms)) if tau is None else tau
        clip = np.array([1.0 if nr == 0 else min(1.0, radius / nr) for nr in norms])
        v = v + (diff * clip[:, None]).mean(axis=0)
    return v


def trimmed_mean(x: np.ndarray, beta: float) -> np.ndarray:
    """Yin et al. 2018: drop k = min(⌈βn⌉, ⌊(n-1)/2⌋) per side, average the rest."""
    n = len(x)
    k = 0 if beta <= 0 or n < 3 else min(int(np.ceil(beta * n - 1e-9)), (n - 1) // 2)
    s = np.sort(x, axis=0)
    kept: np.ndarray = s[k : len(x) - k].mean(axis=0)
    return kept


def norm_clip(x: np.ndarray, bound: float) -> np.ndarray:
    """Each row scaled to norm <= bound (Sun et al. 2019)."""
    norms = np.linalg.norm(x, axis=1)
    clipped: np.ndarray = x * np.minimum(1.0, bound / norms)[:, None]
    return clipped

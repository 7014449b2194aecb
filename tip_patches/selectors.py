"""TIP selection rules: which of the N response tokens the grad pass trains on.

One entry point, :func:`select`, returns an :class:`opsd.hooks.TokenSelection` (sorted int64
indices, optional per-token weights, optional adaptive-KL weights, diagnostics).

| rule             | score                          | selection                     | paper            |
|------------------|--------------------------------|-------------------------------|------------------|
| ``all``          | —                              | every token                   | "100%" baselines |
| ``entropy_sample`` | ``p ∝ max(ĥ^α, floor)``      | K without replacement         | Table 3, App. A.2 |
| ``entropy_topk`` | ``ĥ``                          | top K                         | Table 5 "Entropy-only" |
| ``soft_or``      | ``ĥ + δ̂ − ĥ·δ̂``                | top K                         | Eq. 5–7, Table 5 |
| ``soft_or_bottom`` | same                         | bottom K                      | Table 6          |
| ``q3``           | ``(1 − ĥ)·f``                  | top K                         | §7.3, Tables 4, 7 |
| ``adaptive_kl``  | entropy sampling + extra term  | K sampled                     | App. B.1, Table 8 |

``K = ceil(ratio · N)``. Top-K breaks ties by position, lower index first, so a run is
reproducible; Bottom-K (DECIDE) is the tail of that same ranking, i.e. exactly the tokens that
Top-(N−K) drops (Table 6's "bottom 50 %" is then the complement of the top 50 %), so its ties go
to the higher index. Sampling draws from ``generator`` only, so it is reproducible from its seed.

**Loss contract** (Eq. 7): the trainer's loss on a selection is
``(1/K) Σ_i w_i · δ_{idx_i}`` (+ ``extra_loss_weight_i · KL(q̃_T ‖ π_S)_{idx_i}``), K = number of
kept tokens (global under data parallelism), ``w_i = 1`` when ``weights is None``.

**Importance weights** (DECIDE, App. A.2). The paper's estimator ``Σ_{t∈S} δ_t / (N·K·p_t)`` is
the one for sampling *with* replacement; the rule samples *without* replacement (the
Efraimidis–Spirakis form of successive sampling: keys ``r_t = E_t / p_t``, ``E_t ~ Exp(1)``, keep
the K smallest). For that scheme the rank-conditioning Horvitz–Thompson estimator (Cohen &
Kaplan, bottom-k sketches) is exactly unbiased: with ``τ`` = the (K+1)-th smallest key,

    π̂_t = 1 − exp(−p_t · τ) = P(t ∈ S | keys of all other tokens),
    E[ Σ_{t∈S} δ_t / π̂_t ] = Σ_t δ_t.

(Proof: given the other keys, t is kept iff ``r_t`` is below the K-th smallest other key, which
is then the (K+1)-th smallest overall.) Under the contract above the weights are therefore
``w_t = K / (N · π̂_t)``, so ``(1/K) Σ_{t∈S} w_t δ_t`` is an unbiased estimate of the all-token
mean ``(1/N) Σ_t δ_t`` and ``E[Σ_{t∈S} w_t] = K``. For small ``p_t τ``, ``π̂_t ≈ K p_t / Σp`` and
the weight reduces to the paper's ``1/(N K p_t)`` form. At ratio 1 (K = N) ``τ = ∞`` and every
weight is exactly 1.

**Zero probabilities** (DECIDE): min-max normalization gives ĥ = 0 to the lowest-entropy token
(to every token of a constant batch), so ``p_t = max(ĥ_t^α, floor)`` with ``floor = 1e-3`` by
default (``tip.sample_floor``). Every token then has ``p_t > 0``: the estimator is unbiased for any
δ (App. A.2 needs ``p_t > 0`` wherever ``δ_t ≠ 0``), K > #nonzero is well defined, and a floor
token that is drawn gets a large but finite weight (variance ∝ 1/p_t, App. A.2 Eq. 14).

**Adaptive KL** (DECIDE, App. B.1 / Table 8, after Entropy-Aware OPD): indices by entropy
sampling; each kept token gets an extra loss term ``α · 1[H^T_t ≥ τ] · KL(q̃_T ‖ π_S)`` where q̃_T
is the teacher's top-k (k = 16, ``opsd.losses.EXTRA_TOPK``) renormalized, ``τ = 0.8`` nats on the
full-vocabulary teacher entropy, ``α = 1``. This rule returns ``extra_loss_weight = α·1[H^T ≥ τ]``
(times the importance weight when importance weighting is on, so the whole loss stays unbiased);
the trainer computes the top-k KL with gradient. With near-zero teacher entropy (the paper's
observation) the indicator is almost never on and the rule is plain entropy sampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from opsd.hooks import Ratio, TokenSelection, TokenStats
from tip_patches import quadrants
# RULES, SAMPLING_RULES and check_ratio live in the torch-free tip_patches.config (re-exported here).
from tip_patches.config import RULES, SAMPLING_RULES, check_ratio  # noqa: F401
from tip_patches.distributed import as_float, gather_stats, group_info, localize, FIELDS
from tip_patches.scores import minmax, num_kept, q3_from_normalized, soft_or_from_normalized

Normalizer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Options:
    """Rule options (the ``tip.*`` config fields of the same names)."""

    entropy_alpha: float = 1.0
    importance_weighted: bool = False
    sample_floor: float = 1e-3
    adaptive_tau: float = 0.8
    adaptive_alpha: float = 1.0


@dataclass
class Picked:
    indices: torch.Tensor  # (K,) int64, sorted
    weights: Optional[torch.Tensor] = None  # (K,)
    extra: Optional[torch.Tensor] = None  # (K,)


# ------------------------------------------------------------------ building blocks

def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the K largest scores, ties to the lower position, returned sorted ``(K,)``."""
    order = torch.sort(scores, descending=True, stable=True).indices[:k]  # stable: ties keep position order
    return order.sort().values


def bottom_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the K smallest scores, returned sorted ``(K,)``: the tail of the *same* ranking
    as :func:`top_k`, so Bottom-K is exactly the complement of Top-(N−K) even with ties (which
    therefore go to the higher position here)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[order.numel() - k:].sort().values


def sampling_probs(h_hat: torch.Tensor, alpha: float, floor: float) -> torch.Tensor:
    """Unnormalized sampling probabilities ``p_t = max(ĥ_t^α, floor)``, ``(N,)`` float64."""
    return h_hat.double().pow(alpha).clamp_min(floor)


def sample_without_replacement(p: torch.Tensor, k: int, generator: Optional[torch.Generator] = None,
                               importance_weighted: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Draw K of N tokens with probability ∝ ``p (N,)``, without replacement (Table 3).

    Returns sorted indices ``(K,)`` and, if ``importance_weighted``, the weights
    ``K / (N · π̂_t)`` of the module docstring (else ``None``). Random numbers come from
    ``generator`` (the global torch RNG when ``None``), on the generator's device.
    """
    n = p.numel()
    dev = generator.device if generator is not None else torch.device("cpu")
    e = torch.empty(n, dtype=torch.float64, device=dev).exponential_(generator=generator)
    keys = e.to(p.device) / p  # (N,) Efraimidis–Spirakis keys; the K smallest are the sample
    sorted_keys, order = torch.sort(keys, stable=True)
    idx = order[:k].sort().values
    if not importance_weighted:
        return idx, None
    tau = sorted_keys[k] if k < n else torch.tensor(math.inf, dtype=torch.float64, device=p.device)
    incl = -torch.expm1(-p[idx] * tau)  # π̂_t = 1 - exp(-p_t τ): rank-conditioning inclusion prob
    return idx, (k / (n * incl)).float()


# ------------------------------------------------------------------ the rules

def _all(stats, h_hat, d_hat, k, gen, opt) -> Picked:
    return Picked(torch.arange(h_hat.numel(), device=h_hat.device))


def _entropy_sample(stats, h_hat, d_hat, k, gen, opt) -> Picked:
    p = sampling_probs(h_hat, opt.entropy_alpha, opt.sample_floor)
    return Picked(*sample_without_replacement(p, k, gen, opt.importance_weighted))


def _entropy_topk(stats, h_hat, d_hat, k, gen, opt) -> Picked:
    return Picked(top_k(h_hat, k))  # Eq. 6 with δ̂ = 0


def _soft_or(stats, h_hat, d_hat, k, gen, opt) -> Picked:
    return Picked(top_k(soft_or_from_normalized(h_hat, d_hat), k))  # TIP Eq. 5-6


def _soft_or_bottom(stats, h_hat, d_hat, k, gen, opt) -> Picked:
    return Picked(bottom_k(soft_or_from_normalized(h_hat, d_hat), k))  # Table 6 sanity check


def _q3(stats, h_hat, d_hat, k, gen, opt) -> Picked:
    return Picked(top_k(q3_from_normalized(h_hat, stats.forward_kl), k))  # TIP §7.3


def _adaptive_kl(stats, h_hat, d_hat, k, gen, opt) -> Picked:
    picked = _entropy_sample(stats, h_hat, d_hat, k, gen, opt)
    on = (stats.teacher_entropy[picked.indices] >= opt.adaptive_tau).float()  # 1[H^T_t >= τ], App. B.1
    extra = opt.adaptive_alpha * on
    if picked.weights is not None:  # keep the extra term unbiased too
        extra = extra * picked.weights
    return Picked(picked.indices, picked.weights, extra)


RULE_FNS = {"all": _all, "entropy_sample": _entropy_sample, "entropy_topk": _entropy_topk,
            "soft_or": _soft_or, "soft_or_bottom": _soft_or_bottom, "q3": _q3, "adaptive_kl": _adaptive_kl}


# ------------------------------------------------------------------ entry point

def _check_finite(stats: TokenStats) -> None:
    for f in FIELDS:
        if not bool(torch.isfinite(getattr(stats, f)).all()):
            raise ValueError(f"TokenStats.{f} contains NaN or inf; TIP cannot rank these tokens")


def _empty(stats: TokenStats) -> TokenSelection:
    dev = stats.entropy.device
    return TokenSelection(indices=torch.zeros(0, dtype=torch.long, device=dev))


def select(stats: TokenStats, rule: str, ratio: float, generator: Optional[torch.Generator] = None, *,
           normalizers: Optional[Tuple[Normalizer, Normalizer]] = None, entropy_alpha: float = 1.0,
           importance_weighted: bool = False, sample_floor: float = 1e-3, quadrant_threshold: str = "fixed",
           entropy_threshold: float = 0.5, divergence_threshold: float = 0.5, adaptive_tau: float = 0.8,
           adaptive_alpha: float = 1.0) -> TokenSelection:
    """Select tokens of ``stats`` (each field ``(N,)``) by ``rule`` keeping ``K = ceil(ratio·N)``.

    ``normalizers``: ``(entropy, reverse_kl)`` callables mapping raw ``(N,)`` values to [0, 1];
    default per-batch min-max (Eq. 5); :class:`tip_patches.scores.RunningMinMax` for running
    normalization. Under torch.distributed with world size > 1 the selection is global
    (:mod:`tip_patches.distributed`) and this rank's part is returned. ``N = 0`` gives an empty
    selection. Diagnostics: :func:`tip_patches.quadrants.diagnostics` on the global batch.
    """
    if rule not in RULES:
        raise ValueError(f"tip.rule={rule!r} is unknown; choose one of {list(RULES)}")
    ratio = check_ratio(ratio, rule)
    n_local = stats.num_tokens
    if group_info(stats)[1] == 1 and n_local == 0:
        return _empty(stats)
    glob, offset = gather_stats(as_float(stats))  # collective under DP: every rank gets here
    n = glob.num_tokens
    if n == 0:
        return _empty(stats)
    _check_finite(glob)
    h_norm, d_norm = normalizers or (minmax, minmax)
    h_hat, d_hat = h_norm(glob.entropy), d_norm(glob.reverse_kl)  # (N,) each, TIP Eq. 5
    opt = Options(entropy_alpha, importance_weighted, sample_floor, adaptive_tau, adaptive_alpha)
    picked = RULE_FNS[rule](glob, h_hat, d_hat, num_kept(ratio, n), generator, opt)
    diag = _diagnostics(glob, h_hat, d_hat, picked, quadrant_threshold, entropy_threshold, divergence_threshold)
    sel = TokenSelection(picked.indices, picked.weights, picked.extra, diag)
    return localize(sel, offset, n_local) if n != n_local else sel


def _diagnostics(glob, h_hat, d_hat, picked: Picked, mode, eth, dth) -> Dict[str, float]:
    th_h, th_d = quadrants.thresholds(h_hat, d_hat, mode, eth, dth)
    quad = quadrants.classify(h_hat, d_hat, th_h, th_d)
    kept = torch.zeros_like(quad, dtype=torch.bool)
    kept[picked.indices] = True
    diag = quadrants.diagnostics(glob, quad, kept, th_h, th_d)
    if glob.token_group is not None:
        diag.update(quadrants.group_diagnostics(glob.token_group, glob.group_names or {}, quad, kept))
    if picked.weights is not None:
        diag["tip/weight_mean"] = float(picked.weights.mean())
        diag["tip/weight_max"] = float(picked.weights.max())
    if picked.extra is not None:
        diag["tip/extra_frac"] = Ratio(float((picked.extra > 0).sum()), picked.extra.numel())
    return diag

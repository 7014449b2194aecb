"""Per-token scores of TIP: normalization, Soft-OR (Eq. 5) and the Q3 overconfidence score (§7.3).

Pure functions on ``(N,)`` tensors, computed without gradient (the scores only choose tokens;
the loss alone carries gradient, Eq. 7). Every function is defined on degenerate batches:

- ``N = 0`` gives an empty tensor;
- ``N = 1`` or all values equal (max == min) gives normalized values of **0** — DECIDE: the
  paper's min-max formula divides by zero there; 0 means "no token stands out on this axis", so
  Soft-OR falls back to the other axis and the Q3 confidence ``1 - ĥ`` becomes 1 (all tokens
  equally confident, ranked by divergence alone). Never NaN.

Normalization (Eq. 5) is per-batch min-max by default. The paper names its sensitivity to
outliers as a limitation and suggests running averages as future work; :class:`RunningMinMax` is
that option (DECIDE: an exponential moving average of the batch min and max, see its docstring).
"""
from __future__ import annotations

import math
from typing import Optional

import torch


@torch.no_grad()
def minmax(x: torch.Tensor, lo: Optional[float] = None, hi: Optional[float] = None) -> torch.Tensor:
    """Min-max normalize ``x (N,)`` to [0, 1] (TIP Eq. 5): ``(x - lo) / (hi - lo)``.

    ``lo``/``hi`` default to the batch min/max; given explicitly (running or global values),
    values outside ``[lo, hi]`` are clamped into [0, 1]. ``hi <= lo`` (constant batch, N = 1)
    gives all zeros (module DECIDE). Returns float32 (or float64 for float64 input).
    """
    x = x.detach()
    x = x.float() if x.dtype != torch.float64 else x
    if x.numel() == 0:
        return x.clone()
    lo = float(x.min()) if lo is None else float(lo)
    hi = float(x.max()) if hi is None else float(hi)
    if not hi > lo:  # max == min: the denominator is 0, define ĥ = 0 (never NaN)
        return torch.zeros_like(x)
    return ((x - lo) / (hi - lo)).clamp_(0.0, 1.0)  # clamp: float rounding and out-of-range values


class RunningMinMax:
    """Running-average min-max normalization (the paper's §8 limitation, offered as an option).

    DECIDE: on every call the batch min and max update exponential moving averages,
    ``lo <- m * lo + (1 - m) * min(x)`` and likewise ``hi`` (``m = momentum``); the first call
    initializes them to the batch values. The batch is then normalized with the *updated* running
    values and clamped to [0, 1], so one outlier token moves the scale by only ``(1 - m)`` of its
    excess. A call is one hook invocation (one micro-batch; under data parallelism the global
    micro-batch, so every rank holds the same state). Empty batches leave the state unchanged.
    """

    def __init__(self, momentum: float = 0.9):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"tip.running_momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.lo: Optional[float] = None
        self.hi: Optional[float] = None
        self.updates = 0

    def update(self, x: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            m = self.momentum
            self.lo = m * self.lo + (1 - m) * lo
            self.hi = m * self.hi + (1 - m) * hi
        self.updates += 1

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Update with ``x (N,)``, then normalize it with the running range: ``(N,)`` in [0, 1]."""
        self.update(x)
        return minmax(x, self.lo, self.hi) if self.lo is not None else minmax(x)

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "lo": self.lo, "hi": self.hi, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.momentum = float(state["momentum"])
        self.lo, self.hi = state["lo"], state["hi"]
        self.updates = int(state["updates"])


@torch.no_grad()
def soft_or_from_normalized(h_hat: torch.Tensor, d_hat: torch.Tensor) -> torch.Tensor:
    """Soft-OR of normalized axes: ``s = ĥ + δ̂ - ĥ·δ̂`` (TIP Eq. 5), ``(N,)`` in [0, 1].

    Evaluated as ``ĥ + δ̂·(1 - ĥ)``: the same value, but exact in floating point on the edges of
    the square (δ̂ = 1 or ĥ = 1 gives exactly 1, δ̂ = 0 gives exactly ĥ), so the tokens that
    either axis ranks first tie at the top instead of being reordered by rounding.
    """
    return h_hat + d_hat * (1.0 - h_hat)


@torch.no_grad()
def soft_or(entropy: torch.Tensor, divergence: torch.Tensor) -> torch.Tensor:
    """Soft-OR score from raw student entropy ``(N,)`` and reverse KL ``(N,)`` (TIP Eq. 5).

    Both are min-max normalized over the batch inside. Nonzero whenever either axis is, so
    low-entropy high-divergence (Q3) tokens are no longer scored 0 as with entropy alone.
    """
    return soft_or_from_normalized(minmax(entropy), minmax(divergence))


@torch.no_grad()
def q3_from_normalized(h_hat: torch.Tensor, forward_kl: torch.Tensor) -> torch.Tensor:
    """Overconfidence score ``q = (1 - ĥ) · f`` (TIP §7.3, steps 3-4); ``f`` is *not* normalized."""
    f = forward_kl.detach().to(h_hat.dtype)
    return (1.0 - h_hat) * f


@torch.no_grad()
def q3_score(entropy: torch.Tensor, forward_kl: torch.Tensor) -> torch.Tensor:
    """Q3 score from raw entropy and forward KL KL(pi_T || pi_S), both ``(N,)`` (TIP §7.3).

    High where the student is confident (low ĥ) and the teacher disagrees (large f).
    """
    return q3_from_normalized(minmax(entropy), forward_kl)


def num_kept(ratio: float, n: int) -> int:
    """``K = ceil(ratio · N)`` (EQUATIONS.md), so K >= 1 whenever N >= 1.

    The product is rounded to 9 decimals first so that float noise such as
    ``0.1 * 30 = 3.0000000000000004`` does not keep one token more than the user asked for.
    """
    if n <= 0:
        return 0
    return min(n, max(1, math.ceil(round(ratio * n, 9))))

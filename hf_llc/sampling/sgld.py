r"""The SGLD update on flat fp32 parameter vectors (pure tensor code, no Hugging Face).

Localized tempered posterior (Lau et al., arXiv 2308.12108, eq. 7):

    p(w) ∝ exp(−U(w)),   U(w) = nβ·L_n(w) + (γ/2)·‖w − w*‖²

SGLD step on minibatch B_t with diagonal preconditioner A (identity for plain SGLD):

    w_{t+1} = w_t − (ε/2)·A·[nβ·∇L_{B_t}(w_t) + γ·(w_t − w*)] + √ε·√A·ξ_t,   ξ_t ~ N(0, I)

(Euler–Maruyama), or with ``integrator="leimkuhler-matthews"`` the noise term
√ε·√A·(ξ_t + ξ_{t+1})/2: each draw enters two consecutive steps (Leimkuhler & Matthews 2013).
With a fixed A and ε its stationary law on a Gaussian target is exact: in a direction of
preconditioned curvature h the iteration is x' = (1 − εh/2)·x + (√ε/2)·(ξ_t + ξ_{t+1}), whose
stationary variance is 1/h for every stable ε (εh < 4), where Euler–Maruyama's is
1/(h·(1 − εh/4)).

Every function here works in place: one SGLD step allocates nothing parameter-sized (at most
a cache-sized chunk) and never synchronises with the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._ops import axpy_
from .preconditioners import DiagonalPreconditioner, Preconditioner


@dataclass(frozen=True)
class StepCoefficients:
    """The numbers of one SGLD step of step size ε: floats for one chain, or per-chain
    (chains × 1) tensors for a stack, built once per change of ε (not per step)."""

    neg_half: float | Tensor  # −ε/2
    root: float | Tensor  # √ε
    keep: float | Tensor  # 1 − εγ/2
    shrink: float | Tensor  # εγ/2
    grad: float | Tensor  # −εnβ/2
    half_root: float | Tensor  # √ε/2

    @classmethod
    def of(cls, half, root, *, nbeta: float, localization: float) -> StepCoefficients:
        """From ``half`` = ε/2 and ``root`` = √ε (numbers or tensors of the same shape)."""
        shrink = half * localization
        return cls(-half, root, 1 - shrink, shrink, -half * nbeta, root / 2)


def langevin_update_(
    w: Tensor,
    grad: Tensor,
    w_star: Tensor,
    *,
    coefficients: StepCoefficients,
    nbeta: float,
    localization: float,
    draw_noise: Callable[[Tensor], Any],
    precond: Preconditioner | None = None,
    adapt: bool = False,
    prev_noise: Tensor | None = None,
) -> None:
    r"""The SGLD update of ``w`` (one chain (d,) or a stack (chains × d)), in place.

    ``draw_noise(buf)`` fills ``buf`` with standard normals. ``grad`` (∇L_B(w)) is consumed:
    it holds the drift, then the noise, so the step needs no buffer besides w, the gradient,
    w* and the preconditioner's own state. With ``adapt`` an adaptive preconditioner is first
    refreshed from this step's ∇U (pSGLD's order: the new A moves this step).

    ``prev_noise`` (shaped like ``w``, holding the previous step's standard normals ξ_t)
    makes it the Leimkuhler–Matthews step: the noise term is √ε·√A·(ξ_t + ξ_{t+1})/2 and
    ``prev_noise`` is left holding ξ_{t+1} for the next step.
    """
    c = coefficients
    if precond is None or precond.name == "identity":
        # w ← (1 − εγ/2)·w + (εγ/2)·w* − (εnβ/2)·g + √ε·ξ: three passes and the noise.
        if localization:
            w.mul_(c.keep)
            axpy_(w, w_star, c.shrink)
        axpy_(w, grad, c.grad)
        _noise_move_(w, grad, c, draw_noise, None, prev_noise)
        return
    # w ← w − (ε/2)·A·∇U(w), A first refreshed from this ∇U when adapting
    precond.drift_descend_(
        w, grad, w_star, nbeta=nbeta, localization=localization, coef=c.neg_half, adapt=adapt
    )
    _noise_move_(w, grad, c, draw_noise, precond, prev_noise)


def _noise_move_(w, grad, c: StepCoefficients, draw_noise, precond, prev_noise) -> None:
    """The noise half of the step, in place: ξ_{t+1} is drawn into ``grad``, then
    w ← w + √ε·√A·ξ_{t+1} (Euler–Maruyama), or with ξ_t in ``prev_noise``
    w ← w + (√ε/2)·√A·(ξ_t + ξ_{t+1}) and ``prev_noise`` keeps ξ_{t+1} (Leimkuhler–Matthews).
    ``precond`` ``None`` is the identity."""
    draw_noise(grad)
    if prev_noise is None:
        buf, coef = grad, c.root
    else:
        buf, coef = prev_noise.add_(grad), c.half_root  # ξ_t + ξ_{t+1}
    if precond is None:
        axpy_(w, buf, coef)
    else:
        precond.descend_(w, buf, coef, sqrt=True)  # consumes buf
    if prev_noise is not None:
        prev_noise.copy_(grad)


def sgld_step_(
    w: Tensor,
    grad: Tensor,
    w_star: Tensor,
    *,
    step_size: float,
    nbeta: float,
    localization: float,
    generator: torch.Generator,
    precond: Preconditioner | Tensor | None = None,
    adapt: bool = False,
    prev_noise: Tensor | None = None,
) -> None:
    r"""One SGLD step, in place on ``w``; ``grad`` is consumed (overwritten).

    ``grad`` is ∇L_{B_t}(w_t) (the minibatch mean loss, not yet multiplied by nβ). The noise
    is drawn into ``grad``'s buffer once the gradient has been applied. Without a
    preconditioner the step is

        w ← (1 − εγ/2)·w + (εγ/2)·w* − (εnβ/2)·g + √ε·ξ,   ξ ~ N(0, I)

    and with one (a :class:`~hf_llc.sampling.preconditioners.Preconditioner`, or a tensor
    holding the diagonal A)

        w ← w − (ε/2)·A·(nβ·g + γ·(w − w*)) + √ε·√A·ξ.

    ``adapt=True`` first refreshes an adaptive preconditioner (RMSProp) from this ∇U. With
    ``prev_noise`` (the previous step's ξ) the noise term is the Leimkuhler–Matthews one,
    √ε·√A·(ξ_prev + ξ)/2, and ``prev_noise`` is overwritten with this step's ξ.
    """
    if isinstance(precond, Tensor):
        precond = DiagonalPreconditioner(precond, check=False)

    def draw_noise(buf: Tensor) -> None:
        torch.randn(buf.shape, generator=generator, out=buf, dtype=buf.dtype, device=buf.device)

    langevin_update_(
        w,
        grad,
        w_star,
        coefficients=StepCoefficients.of(
            step_size / 2, math.sqrt(step_size), nbeta=nbeta, localization=localization
        ),
        nbeta=nbeta,
        localization=localization,
        draw_noise=draw_noise,
        precond=precond,
        adapt=adapt,
        prev_noise=prev_noise,
    )


def sgld_step_chains_(
    W: Tensor,
    G: Tensor,
    w_star: Tensor,
    *,
    step_sizes: list[float],
    nbeta: float,
    localization: float,
    generators: list[torch.Generator],
    active: list[bool],
    precond: Preconditioner | None = None,
    adapt: bool = False,
    cache: dict | None = None,
    prev_noise: Tensor | None = None,
) -> None:
    r"""One SGLD step of every chain, in place on the rows of ``W`` (C × d); ``G`` is consumed.

    Row c moves with its own ε_c = ``step_sizes[c]`` and draws its noise from
    ``generators[c]`` (d standard normals, as :func:`hf_llc.sampling.sgld_step_` draws them),
    into row c of ``G`` once the gradient has been applied; an inactive chain neither moves
    nor draws. ``precond`` holds a (C × d) state per chain or a shared (d,) diagonal;
    ``None`` for identity. ``cache`` (a dict kept between calls) saves rebuilding the
    per-chain coefficients while the step sizes do not change. ``prev_noise`` (C × d): the
    Leimkuhler–Matthews step, as in :func:`hf_llc.sampling.sgld_step_`.
    """
    dev, dt = W.device, W.dtype
    eps = tuple(s if a else 0.0 for s, a in zip(step_sizes, active))
    if cache is not None and cache.get("eps") == eps:
        coefficients = cache["coefficients"]
    else:
        half = torch.tensor(eps, device=dev, dtype=dt).unsqueeze(1) / 2
        root = torch.tensor([math.sqrt(s) for s in eps], device=dev, dtype=dt).unsqueeze(1)
        coefficients = StepCoefficients.of(half, root, nbeta=nbeta, localization=localization)
        if cache is not None:
            cache.update(eps=eps, coefficients=coefficients)

    def draw_noise(buf: Tensor) -> None:
        for row, gen, on in zip(buf, generators, active):
            if on:
                torch.randn(row.shape, generator=gen, out=row, dtype=dt, device=dev)
            else:
                row.zero_()

    langevin_update_(
        W,
        G,
        w_star,
        coefficients=coefficients,
        nbeta=nbeta,
        localization=localization,
        draw_noise=draw_noise,
        precond=precond,
        adapt=adapt,
        prev_noise=prev_noise,
    )


def potential_grad(
    grad: Tensor,
    w: Tensor,
    w_star: Tensor,
    *,
    nbeta: float,
    localization: float,
    metric: Tensor | None = None,
) -> Tensor:
    """∇U(w) = nβ·∇L_B(w) + γ·M·(w − w*), M the localizer's diagonal metric (identity when
    ``metric`` is ``None``); allocates, used off the hot path."""
    delta = w - w_star
    if metric is not None:
        delta = delta * metric
    return torch.add(grad * nbeta, delta, alpha=localization)


def potential(
    loss: Tensor,
    w: Tensor,
    w_star: Tensor,
    *,
    nbeta: float,
    localization: float,
    metric: Tensor | None = None,
):
    """U(w) = nβ·L_B(w) + (γ/2)·(w − w*)ᵀM(w − w*) (a 0-d tensor; M = I when ``metric`` is
    ``None``)."""
    sq = (w - w_star) ** 2
    if metric is not None:
        sq = sq * metric
    return loss * nbeta + 0.5 * localization * torch.sum(sq)


def mala_acceptance(
    w: Tensor,
    w_new: Tensor,
    u: Tensor,
    u_new: Tensor,
    grad_u: Tensor,
    grad_u_new: Tensor,
    *,
    step_size: float,
    precond: Tensor | None = None,
) -> Tensor:
    r"""Metropolis–Hastings acceptance probability of the Langevin proposal w → w'.

    With the proposal q(w'|w) = N(w − (ε/2)A∇U(w), εA) the acceptance probability is

        α = min(1, exp(U(w) − U(w') + log q(w|w') − log q(w'|w))),
        log q(b|a) = −‖b − a + (ε/2)A∇U(a)‖²_{A⁻¹} / (2ε) + const.

    U and ∇U are evaluated on the same minibatch at both points; SGLD never rejects, so this
    measures how far each step is from an exact Langevin step (healthy ≈ 0.9 or more). With a
    state-dependent preconditioner (RMSProp) A is held fixed between the two points.
    """
    a = torch.ones_like(w) if precond is None else precond
    fwd = w_new - w + 0.5 * step_size * a * grad_u
    bwd = w - w_new + 0.5 * step_size * a * grad_u_new
    log_q_fwd = -torch.sum(fwd * fwd / a) / (2 * step_size)
    log_q_bwd = -torch.sum(bwd * bwd / a) / (2 * step_size)
    log_alpha = u - u_new + log_q_bwd - log_q_fwd
    return torch.exp(torch.clamp(log_alpha, max=0.0))

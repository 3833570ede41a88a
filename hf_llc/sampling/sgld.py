r"""The SGLD update on flat fp32 parameter vectors (pure tensor code, no Hugging Face).

Localized tempered posterior (Lau et al., arXiv 2308.12108, eq. 7):

    p(w) ∝ exp(−U(w)),   U(w) = nβ·L_n(w) + (γ/2)·‖w − w*‖²

SGLD step on minibatch B_t with diagonal preconditioner A (identity for plain SGLD):

    w_{t+1} = w_t − (ε/2)·A·[nβ·∇L_{B_t}(w_t) + γ·(w_t − w*)] + N(0, ε·A)

Every function here works in place on preallocated buffers: one SGLD step allocates nothing
and never synchronises with the host.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sgld_step_(
    w: Tensor,
    grad: Tensor,
    w_star: Tensor,
    noise: Tensor,
    *,
    step_size: float,
    nbeta: float,
    localization: float,
    generator: torch.Generator,
    precond: Tensor | None = None,
    precond_sqrt: Tensor | None = None,
) -> None:
    r"""One SGLD step, in place on ``w``.

    ``grad`` is ∇L_{B_t}(w_t) (the minibatch mean loss, not yet multiplied by nβ); ``noise``
    is a scratch buffer of ``w``'s shape. Without a preconditioner ``noise`` may be ``grad``
    itself (the gradient is consumed before the noise is drawn into its buffer), which saves a
    parameter-sized buffer per chain; with one it must be a separate buffer. Without a
    preconditioner the step is

        w ← (1 − εγ/2)·w + (εγ/2)·w* − (εnβ/2)·g + √ε·ξ,   ξ ~ N(0, I)

    and with one (``precond`` = A, ``precond_sqrt`` = √A)

        w ← w − (ε/2)·A·(nβ·g + γ·(w − w*)) + √ε·√A·ξ.
    """
    if precond is None:
        if localization:
            shrink = step_size * localization / 2
            w.mul_(1 - shrink).add_(w_star, alpha=shrink)
        w.add_(grad, alpha=-step_size * nbeta / 2)
        torch.randn(w.shape, generator=generator, out=noise, dtype=w.dtype, device=w.device)
        w.add_(noise, alpha=math.sqrt(step_size))
        return
    if noise is grad:
        raise ValueError("with a preconditioner, noise must be a buffer separate from grad.")
    # noise doubles as the drift buffer before it holds the noise.
    torch.sub(w, w_star, out=noise)
    noise.mul_(localization).add_(grad, alpha=nbeta).mul_(precond)
    w.add_(noise, alpha=-step_size / 2)
    torch.randn(w.shape, generator=generator, out=noise, dtype=w.dtype, device=w.device)
    w.addcmul_(noise, precond_sqrt, value=math.sqrt(step_size))


def potential_grad(
    grad: Tensor, w: Tensor, w_star: Tensor, *, nbeta: float, localization: float
) -> Tensor:
    """∇U(w) = nβ·∇L_B(w) + γ·(w − w*) (allocates; used off the hot path)."""
    return torch.add(grad * nbeta, w - w_star, alpha=localization)


def potential(loss: Tensor, w: Tensor, w_star: Tensor, *, nbeta: float, localization: float):
    """U(w) = nβ·L_B(w) + (γ/2)·‖w − w*‖² (a 0-d tensor)."""
    return loss * nbeta + 0.5 * localization * torch.sum((w - w_star) ** 2)


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

"""Diagonal preconditioners A for SGLD: identity, RMSProp (pSGLD) and a user-given diagonal.

pSGLD (Li et al., AAAI 2016): V ← αV + (1 − α)·g∘g with g = ∇U(w) the stochastic gradient
of the potential, A ∝ 1 / (δ·mean(√V) + √V), normalised to mean(A) = 1. The Γ correction term
of pSGLD is neglected, as is usual. Two departures from the paper keep it usable at a minimum:
the damping δ is relative to the mean gradient scale (at w* the gradient is ~0, and an absolute
δ would make A = 1/δ explode), and A is normalised so that its overall scale stays in the step
size ε (which ``step_size="curvature"`` sets from the preconditioned curvature).
A user-given positive diagonal (e.g. per-layer rescaling factors) is what makes the estimate
invariant to the rescaling symmetries of ReLU networks (Furman & Lau, arXiv 2402.03698).
"""

from __future__ import annotations

import torch
from torch import Tensor


class Preconditioner:
    """Identity preconditioner: ``A`` and ``A_sqrt`` are ``None`` (the fast path)."""

    name = "identity"
    A: Tensor | None = None
    A_sqrt: Tensor | None = None

    def update(self, grad: Tensor, w: Tensor, w_star: Tensor, nbeta: float, gamma: float):
        """Refresh A from the current gradient (no-op for fixed preconditioners)."""

    def state_dict(self) -> dict:
        """The state that changes while sampling (tensors and plain values), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (in place)."""


class DiagonalPreconditioner(Preconditioner):
    """A fixed, user-given positive diagonal A (flat fp32 tensor)."""

    name = "custom"

    def __init__(self, diagonal: Tensor):
        if diagonal.ndim != 1:
            raise ValueError("the preconditioner diagonal must be flat (one entry per parameter).")
        if not bool(torch.isfinite(diagonal).all()) or not bool((diagonal > 0).all()):
            raise ValueError(
                "preconditioner diagonal entries must be finite and > 0; rescale or clamp it."
            )
        self.A = diagonal
        self.A_sqrt = diagonal.sqrt()


class RMSPropPreconditioner(Preconditioner):
    """pSGLD's RMSProp diagonal, updated in place every step.

    ``like`` is one chain's flat parameters (d,) or a stack of chains (chains × d); with a
    stack every chain keeps its own V and A.
    """

    name = "rmsprop"

    def __init__(self, like: Tensor, decay: float, eps: float):
        self.decay = decay
        self.eps = eps
        self.V = torch.zeros_like(like)
        self.A = torch.ones_like(like)
        self.A_sqrt = torch.ones_like(like)
        self._g = torch.empty_like(like)
        self._initialised = False

    def update(self, grad: Tensor, w: Tensor, w_star: Tensor, nbeta: float, gamma: float):
        torch.sub(w, w_star, out=self._g)
        self._g.mul_(gamma).add_(grad, alpha=nbeta)
        if not self._initialised:
            # Start V at the first squared gradient instead of 0 (no huge first steps).
            torch.mul(self._g, self._g, out=self.V)
            self._initialised = True
        else:
            self.V.mul_(self.decay).addcmul_(self._g, self._g, value=1 - self.decay)
        torch.sqrt(self.V, out=self.A)
        # Means over the last dimension: a (chains × d) state normalises each chain alone.
        scale = self.A.mean(dim=-1, keepdim=True)
        # V ≡ 0 (exactly at a minimum) gives A ≡ 1 after the normalisation below.
        self.A.add_(scale * self.eps + 1e-30).reciprocal_()
        self.A.div_(self.A.mean(dim=-1, keepdim=True))
        torch.sqrt(self.A, out=self.A_sqrt)

    def state_dict(self) -> dict:
        return {
            "V": self.V,
            "A": self.A,
            "A_sqrt": self.A_sqrt,
            "initialised": self._initialised,
        }

    def load_state_dict(self, state: dict) -> None:
        for name in ("V", "A", "A_sqrt"):
            getattr(self, name).copy_(state[name])
        self._initialised = bool(state["initialised"])

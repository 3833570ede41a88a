"""The localized tempered posterior at w* that every chain samples, as one object.

    p(w) ∝ exp(−U(w)),   U(w) = nβ·L_n(w) + (γ/2)·(w − w*)ᵀM(w − w*)

(M = I, or the preconditioner's metric for ``"fisher-burnin"``). The loss problem, w*, nβ,
L_n(w*), the per-sample losses at w* and a user diagonal travel together here instead of
being threaded through every function; γ and everything else about how to sample are the
:class:`~hf_llc.sampling.SamplerConfig`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .config import SamplerConfig
from .preconditioners import Preconditioner, make_preconditioner


@dataclass
class LocalPosterior:
    """What a chain needs to know about its target.

    Attributes:
        problem: the loss (:class:`~hf_llc.sampling.chain.LossProblem`).
        w_star: the flat parameters w* the posterior is localized at.
        nbeta: nβ, the inverse temperature times the number of samples.
        init_loss: L_n(w*), the reference of the divergence check.
        init_per_sample: per-sample losses at w* (the paired estimator's L_{B_t}(w*)), or
            ``None``.
        precond_diagonal: a user-given diagonal A (shared by every chain), or ``None``.
    """

    problem: Any
    w_star: Tensor
    nbeta: float
    init_loss: float
    init_per_sample: Tensor | None = None
    precond_diagonal: Tensor | None = None

    @property
    def num_params(self) -> int:
        return self.w_star.numel()

    def divergence_threshold(self, cfg: SamplerConfig) -> float:
        """A chain whose L_B exceeds L_n(w*) by more than this has diverged: ``divergence_factor``
        times (|L_n(w*)| + d/nβ), d/nβ being the loss scale of the posterior's own spread."""
        return cfg.divergence_factor * (abs(self.init_loss) + self.num_params / self.nbeta)

    def preconditioner(self, cfg: SamplerConfig, like: Tensor) -> Preconditioner:
        """A fresh preconditioner for the chains stacked in ``like`` (C × d)."""
        return make_preconditioner(
            cfg,
            like,
            nbeta=self.nbeta,
            diagonal=self.precond_diagonal,
            segments=getattr(self.problem, "segments", None),
        )

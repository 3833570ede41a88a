"""Diagonal preconditioners A for SGLD: identity, RMSProp (pSGLD), the windowed inverse Fisher
diagonal (the default, :class:`FisherPreconditioner`) and a user-given diagonal.

pSGLD (Li et al., AAAI 2016): V ← αV + (1 − α)·g∘g with g = ∇U(w) the stochastic gradient
of the potential, A ∝ 1 / (δ·mean(√V) + √V), normalised to mean(A) = 1. The Γ correction term
of pSGLD is neglected, as is usual. Two departures from the paper keep it usable at a minimum:
the damping δ is relative to the mean gradient scale (at w* the gradient is ~0, and an absolute
δ would make A = 1/δ explode), and A is normalised so that its overall scale stays in the step
size ε (which ``step_size="curvature"`` sets from the preconditioned curvature).
A user-given positive diagonal (e.g. per-layer rescaling factors) is what makes the estimate
invariant to the rescaling symmetries of ReLU networks (Furman & Lau, arXiv 2402.03698).

**Memory.** A preconditioner acts on a buffer in place (:meth:`Preconditioner.scale_`,
:meth:`Preconditioner.descend_`), so the SGLD step never materialises A or √A: RMSProp keeps
one parameter-sized vector per chain, R = √V, from which A is recomputed a cache-sized chunk
at a time (two scalars per chain, the damping shift and the normalisation, are refreshed with
R); once frozen (``"rmsprop-burnin"`` after burn-in) R is overwritten in place by √A. ``A``
and ``A_sqrt`` are still available as tensors for the code off the hot path (step-size
measurements, MALA), computed on request.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._ops import _potential_grad_chunk_, axpy_, part, potential_grad_, spans, total


class Preconditioner:
    """Identity preconditioner: ``A`` and ``A_sqrt`` are ``None`` (the fast path)."""

    name = "identity"
    #: Whether :meth:`update_` changes A (RMSProp); fixed preconditioners ignore it.
    adaptive = False
    #: The localizer's metric M in (γ/2)(w − w*)ᵀM(w − w*): ``None`` for the Euclidean one.
    metric: Tensor | None = None

    @property
    def A(self) -> Tensor | None:  # noqa: N802 - the paper's name
        """The diagonal A as a tensor (``None`` for identity); may allocate."""
        return None

    @property
    def A_sqrt(self) -> Tensor | None:  # noqa: N802
        """√A as a tensor (``None`` for identity); may allocate."""
        return None

    def row(self, i: int) -> Preconditioner:
        """Chain ``i``'s preconditioner, for a state stacked over chains (itself otherwise)."""
        return self

    def scale_(self, buf: Tensor, *, sqrt: bool = False) -> Tensor:
        """``buf ← A·buf`` (or ``√A·buf`` with ``sqrt=True``), in place; returns ``buf``."""
        return buf

    def update_(self, drift: Tensor) -> None:
        """Refresh A from ∇U(w) (held in ``drift``, not modified). No-op unless adaptive."""

    def drift_(
        self,
        grad: Tensor,
        w: Tensor,
        w_star: Tensor,
        *,
        nbeta: float,
        localization: float,
        adapt: bool = False,
    ) -> None:
        """``grad ← ∇U(w) = nβ·grad + γ·(w − w*)`` in place; with ``adapt``, then refresh A
        from it (:meth:`update_`)."""
        potential_grad_(grad, w, w_star, nbeta=nbeta, localization=localization)
        if adapt:
            self.update_(grad)

    def descend_(self, w: Tensor, buf: Tensor, coef: float | Tensor, *, sqrt: bool = False):
        """``w ← w + coef·A·buf`` (``√A`` with ``sqrt=True``), in place; ``buf`` is consumed.
        ``coef`` is a number or per-chain (chains × 1) coefficients."""
        axpy_(w, self.scale_(buf, sqrt=sqrt), coef)

    def drift_descend_(
        self,
        w: Tensor,
        grad: Tensor,
        w_star: Tensor,
        *,
        nbeta: float,
        localization: float,
        coef: float | Tensor,
        adapt: bool = False,
    ) -> None:
        """:meth:`drift_` then :meth:`descend_`: ``w ← w + coef·A·∇U(w)``, ``grad`` consumed."""
        self.drift_(grad, w, w_star, nbeta=nbeta, localization=localization, adapt=adapt)
        self.descend_(w, grad, coef)

    def refresh(self) -> None:
        """Re-estimate A from what was accumulated since the last refresh (windowed
        preconditioners; the chain measures the step size afresh right after)."""

    def freeze(self) -> None:
        """Stop adapting: A stays as it is from now on (no-op for fixed preconditioners)."""

    def state_dict(self) -> dict:
        """The state that changes while sampling (tensors and plain values), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (in place)."""


class DiagonalPreconditioner(Preconditioner):
    """A fixed, user-given positive diagonal A (flat fp32 tensor, shared by every chain)."""

    name = "custom"

    def __init__(self, diagonal: Tensor, *, check: bool = True):
        if diagonal.ndim != 1:
            raise ValueError("the preconditioner diagonal must be flat (one entry per parameter).")
        if check and (not bool(torch.isfinite(diagonal).all()) or not bool((diagonal > 0).all())):
            raise ValueError(
                "preconditioner diagonal entries must be finite and > 0; rescale or clamp it."
            )
        self._A = diagonal
        self._A_sqrt = diagonal.sqrt()

    @property
    def A(self) -> Tensor:  # noqa: N802
        return self._A

    @property
    def A_sqrt(self) -> Tensor:  # noqa: N802
        return self._A_sqrt

    def scale_(self, buf: Tensor, *, sqrt: bool = False) -> Tensor:
        return buf.mul_(self._A_sqrt if sqrt else self._A)


class RMSPropPreconditioner(Preconditioner):
    """pSGLD's RMSProp diagonal, updated in place every step until frozen.

    ``like`` is one chain's flat parameters (d,) or a stack of chains (chains × d); with a
    stack every chain keeps its own state. The state is R = √V (parameter-sized: keeping the
    root rather than V saves recomputing it in every pass) and, per chain, ``shift`` =
    δ·mean(R) and ``norm`` = mean(1 / (R + shift)), so that

        A = 1 / ((R + shift)·norm)        (mean(A) = 1).

    :meth:`freeze` overwrites R with √A, in place. All passes run a chunk at a time
    (:func:`hf_llc.sampling._ops.spans`), fusing the operations on a chunk while it is in
    cache; none allocates more than a chunk.
    """

    name = "rmsprop"
    adaptive = True

    def __init__(self, like: Tensor, decay: float, eps: float):
        self.decay = decay
        self.eps = eps
        self.R = torch.zeros_like(like)
        scalar = like.shape[:-1] + (1,)
        # Until the first update A ≡ 1: R = 0, shift = 1 (any positive value), norm = 1.
        self.shift = torch.ones(scalar, dtype=like.dtype, device=like.device)
        self.norm = torch.ones(scalar, dtype=like.dtype, device=like.device)
        self._initialised = False
        self.frozen = False

    @property
    def V(self) -> Tensor:  # noqa: N802
        """The running average of squared gradients, V = R² (allocates; before freezing)."""
        if self.frozen:
            raise RuntimeError("a frozen RMSProp preconditioner holds √A, no longer V.")
        return self.R.square()

    # -------------------------------------------------------------------- the hot path

    def _update_chunk_(self, R: Tensor, g: Tensor) -> Tensor:
        """R ← √(αR² + (1 − α)g²) (R ← |g| on the first update); returns R's sum per chain."""
        if not self._initialised:
            torch.abs(g, out=R)
        else:
            R.mul_(R).mul_(self.decay).addcmul_(g, g, value=1 - self.decay).sqrt_()
        return R.sum(dim=-1, keepdim=True)

    def _finish_update(self, root_sum: Tensor) -> None:
        """From Σ R per chain: ``shift``, then ``norm`` (a second pass over R)."""
        self._initialised = True
        R, d = self.R, self.R.shape[-1]
        # R ≡ 0 (exactly at a minimum) gives A ≡ 1 through the normalisation below.
        torch.mul(root_sum, self.eps / d, out=self.shift).add_(1e-30)
        inv = [
            (part(R, sl) + self.shift).reciprocal_().sum(dim=-1, keepdim=True) for sl in spans(R)
        ]
        torch.div(total(inv), d, out=self.norm)

    def update_(self, drift: Tensor) -> None:
        if self.frozen:
            raise RuntimeError("the RMSProp preconditioner is frozen; it no longer adapts.")
        R = self.R
        self._finish_update(
            total([self._update_chunk_(part(R, sl), part(drift, sl)) for sl in spans(R)])
        )

    def drift_(self, grad, w, w_star, *, nbeta, localization, adapt=False) -> None:
        if not adapt:
            return super().drift_(grad, w, w_star, nbeta=nbeta, localization=localization)
        if self.frozen:
            raise RuntimeError("the RMSProp preconditioner is frozen; it no longer adapts.")

        def sweep(sl):  # ∇U and the new R of a chunk while it is in cache
            g = part(grad, sl)
            _potential_grad_chunk_(g, part(w, sl), part(w_star, sl), nbeta, localization)
            return self._update_chunk_(part(self.R, sl), g)

        self._finish_update(total([sweep(sl) for sl in spans(grad)]))

    def _inverse(self, R: Tensor) -> Tensor:
        """1/A = (R + shift)·norm on a chunk of R (before freezing), in a fresh tensor."""
        return (R + self.shift).mul_(self.norm)

    def _factor(self, sl: slice | None, sqrt: bool) -> Tensor:
        """A (or √A) on the chunk ``sl``, in a fresh chunk-sized tensor."""
        R = part(self.R, sl)
        if self.frozen:  # R holds √A
            return R.clone() if sqrt else R.square()
        inverse = self._inverse(R)
        return inverse.rsqrt_() if sqrt else inverse.reciprocal_()

    def scale_(self, buf: Tensor, *, sqrt: bool = False) -> Tensor:
        if self.frozen and sqrt:
            return buf.mul_(self.R)
        for sl in spans(buf):
            part(buf, sl).mul_(self._factor(sl, sqrt))
        return buf

    def _descend_chunk_(self, w: Tensor, b: Tensor, sl, coef, sqrt: bool) -> None:
        """``w ← w + coef·A·b`` (or √A) on one chunk, in as few passes as the coefficient
        allows (a number folds into ``addcmul_``/``addcdiv_``)."""
        R = part(self.R, sl)
        if self.frozen:  # R holds √A
            if not sqrt:
                b.mul_(R)
            if isinstance(coef, Tensor):
                w.addcmul_(b.mul_(R), coef)
            else:
                w.addcmul_(b, R, value=coef)
            return
        denom = self._inverse(R)
        if sqrt:
            denom.sqrt_()
        if isinstance(coef, Tensor):
            w.addcmul_(b.div_(denom), coef)
        else:
            w.addcdiv_(b, denom, value=coef)

    def descend_(self, w, buf, coef, *, sqrt=False) -> None:
        for sl in spans(buf):
            self._descend_chunk_(part(w, sl), part(buf, sl), sl, coef, sqrt)

    def drift_descend_(self, w, grad, w_star, *, nbeta, localization, coef, adapt=False):
        if adapt:  # the new A needs every chunk's ∇U first: two sweeps
            self.drift_(grad, w, w_star, nbeta=nbeta, localization=localization, adapt=True)
            self.descend_(w, grad, coef)
            return
        for sl in spans(grad):  # one sweep: each chunk's ∇U is applied while in cache
            g, wc = part(grad, sl), part(w, sl)
            _potential_grad_chunk_(g, wc, part(w_star, sl), nbeta, localization)
            self._descend_chunk_(wc, g, sl, coef, False)

    def freeze(self) -> None:
        if self.frozen:
            return
        for sl in spans(self.R):
            part(self.R, sl).add_(self.shift).mul_(self.norm).rsqrt_()
        self.frozen = True

    # -------------------------------------------------------------- off the hot path

    @property
    def A(self) -> Tensor:  # noqa: N802
        return self.scale_(torch.ones_like(self.R))

    @property
    def A_sqrt(self) -> Tensor:  # noqa: N802
        return self.scale_(torch.ones_like(self.R), sqrt=True)

    def row(self, i: int) -> RMSPropPreconditioner:
        if self.R.ndim == 1:
            return self
        view = RMSPropPreconditioner.__new__(RMSPropPreconditioner)
        view.decay, view.eps = self.decay, self.eps
        view.R, view.shift, view.norm = self.R[i], self.shift[i], self.norm[i]
        view._initialised, view.frozen = self._initialised, self.frozen
        return view

    def state_dict(self) -> dict:
        return {
            "R": self.R,
            "shift": self.shift,
            "norm": self.norm,
            "initialised": self._initialised,
            "frozen": self.frozen,
        }

    def load_state_dict(self, state: dict) -> None:
        self._initialised = bool(state["initialised"])
        self.frozen = bool(state.get("frozen", False))
        if "R" in state:
            self.R.copy_(state["R"])
            self.shift.copy_(state["shift"])
            self.norm.copy_(state["norm"])
        else:
            # A state holding V rather than R (V, A, √A): R = √V, the scalars recomputed.
            torch.sqrt(state["V"].to(self.R), out=self.R)
            if self._initialised:
                self._finish_update(self.R.sum(dim=-1, keepdim=True))


class FisherPreconditioner(Preconditioner):
    r"""The inverse of a squared-gradient (empirical Fisher) diagonal, re-estimated over windows
    of the burn-in and then frozen: the invariant default (``"fisher-burnin"``).

    Over a window of steps it accumulates F̂ = mean_t (nβ·∇L_{B_t}(w_t))², and at each
    :meth:`refresh` sets

        A = 1 / (F̂ + δ·mean(F̂)),

    fixed until the next refresh (:meth:`freeze` is the last one). Before the first refresh
    A ≡ 1/nβ, or, with ``fisher_start="curvature"`` (the default), the per-tensor start that
    :meth:`start_` sets at step 0. Under a reparametrization w → D·w (D diagonal) the gradient
    goes to D⁻¹·g, so F̂ → D⁻²·F̂ and A → D·A·D: exactly the transformation that makes the SGLD chain
    equivariant (RMSProp's 1/√V only goes to D·A). At equilibrium E[(∂ᵢU)²] = E[∂ᵢᵢU], so F̂ is a
    posterior-averaged curvature diagonal (plus minibatch noise, which scales the same way).
    The damping δ (``fisher_damping``) is relative to the mean of F̂ over each parameter tensor,
    so it is equivariant to per-tensor rescaling and only touches coordinates whose F̂ is ~1/δ
    below their tensor's mean (in practice: coordinates the loss ignores).

    The localizer is measured in the same metric,
    (γ/2)·(w − w*)ᵀ·M·(w − w*) with M = A⁻¹/nβ = (F̂ + δ·mean F̂)/nβ (≈ the curvature diagonal
    of L), so it is invariant too, and its preconditioned drift A·γ·M·(w − w*) is just
    (γ/nβ)·(w − w*).

    ``like`` is one chain's flat parameters (d,) or a stack (chains × d). State: ``S`` (the
    window's sum of squared gradients) and the current A until the freeze (half-way through the
    burn-in); once frozen, ``S`` holds √A and the separate A is dropped. (A is kept in the
    parameters' dtype: a bf16 copy would save half a vector but round 1e-7 differences between
    batched and sequential chains to 2⁻⁸ steps of A.)
    """

    name = "fisher"
    adaptive = True
    #: The most A may grow at one refresh. A window at the previous A underestimates F̂ in the
    #: directions that were slow at it (they barely moved), so the fixed point is reached by
    #: bounded steps; A ← min(new, GROWTH·old) keeps A ↦ D·A·D (old A is equivariant too).
    GROWTH = 10.0

    def __init__(
        self,
        like: Tensor,
        nbeta: float,
        damping: float,
        segments: list[int] | None = None,
        *,
        euclidean: bool = False,
    ):
        self.nbeta = float(nbeta)
        self.damping = float(damping)
        #: ``localizer="euclidean"``: the localizer is (γ/2)‖w − w*‖² instead of the metric's.
        self.euclidean = bool(euclidean)
        d = like.shape[-1]
        self.segments = list(segments) if segments else [d]
        if sum(self.segments) != d:
            raise ValueError(f"segments sum to {sum(self.segments)}, not to the {d} parameters.")
        self.S = torch.zeros_like(like)
        self.A_now: Tensor | None = torch.full_like(like, 1.0 / self.nbeta)
        self.count = 0
        self.frozen = False

    # -------------------------------------------------------------------- the hot path

    def _chunk_A(self, sl) -> Tensor:
        """A on a chunk: a view before freezing, a fresh chunk after."""
        if self.frozen:
            return part(self.S, sl).square()
        return part(self.A_now, sl)

    def _apply_A_(self, buf: Tensor, sl) -> None:
        """``buf ← A·buf`` on the chunk ``sl`` (``buf`` already that chunk), no temporary."""
        if self.frozen:  # S holds √A
            r = part(self.S, sl)
            buf.mul_(r).mul_(r)
        else:
            buf.mul_(part(self.A_now, sl))

    def scale_(self, buf: Tensor, *, sqrt: bool = False) -> Tensor:
        if self.frozen and sqrt:
            return buf.mul_(self.S)
        for sl in spans(buf):
            if sqrt:  # before freezing only (burn-in)
                part(buf, sl).mul_(part(self.A_now, sl).sqrt())
            else:
                self._apply_A_(part(buf, sl), sl)
        return buf

    def update_(self, drift: Tensor) -> None:
        """Accumulate nβ·∇L_B squared (``drift`` must hold nβ·∇L_B, not ∇U)."""
        if self.frozen:
            raise RuntimeError("the Fisher preconditioner is frozen; it no longer adapts.")
        self.S.addcmul_(drift, drift)
        self.count += 1

    def drift_(self, grad, w, w_star, *, nbeta, localization, adapt=False) -> None:
        """``grad ← ∇U = nβ·grad + γ·M·(w − w*)``, M = 1/(nβ·A); with ``adapt`` the squared
        nβ·grad first enters the window's sum."""
        if adapt and self.frozen:
            raise RuntimeError("the Fisher preconditioner is frozen; it no longer adapts.")
        for sl in spans(grad):
            g = part(grad, sl).mul_(nbeta)
            if adapt:
                part(self.S, sl).addcmul_(g, g)
            if localization:
                delta = torch.sub(part(w, sl), part(w_star, sl))
                if self.euclidean:
                    g.add_(delta, alpha=localization)
                else:
                    g.add_(delta.div_(self._chunk_A(sl)), alpha=localization / nbeta)
        if adapt:
            self.count += 1

    def descend_(self, w, buf, coef, *, sqrt=False) -> None:
        axpy_(w, self.scale_(buf, sqrt=sqrt), coef)

    def drift_descend_(self, w, grad, w_star, *, nbeta, localization, coef, adapt=False):
        """``w ← w + coef·(A·nβ·grad + (γ/nβ)·(w − w*))`` in one sweep (``grad`` consumed).
        The localizer acts on the point after the gradient move, w' = w + coef·nβ·A·grad:
        ``w ← (1 + k)·w' − k·w*``, k = coef·γ/nβ, which differs from the formula by
        k·coef·nβ·A·grad, second order in ε. With the Euclidean localizer it is the formula
        ``w ← w + coef·A·(nβ·grad + γ·(w − w*))``."""
        if adapt and self.frozen:
            raise RuntimeError("the Fisher preconditioner is frozen; it no longer adapts.")
        if self.euclidean:
            self.drift_(grad, w, w_star, nbeta=nbeta, localization=localization, adapt=adapt)
            self.descend_(w, grad, coef)
            return
        # w ← w + coef·nβ·A·g + k·(w − w*), k = coef·γ/nβ, as (1 + k)·w − k·w*: no temporary.
        # ``coef`` is a number, or per-chain (chains × 1) coefficients for a stack.
        drift, k = coef * nbeta, coef * (localization / nbeta)
        keep = 1 + k
        for sl in spans(grad):
            g, wc = part(grad, sl), part(w, sl)
            if adapt:
                part(self.S, sl).addcmul_(g, g, value=nbeta * nbeta)
            self._apply_A_(g, sl)
            axpy_(wc, g, drift)
            if localization:
                wc.mul_(keep)
                axpy_(wc, part(w_star, sl), -k)
        if adapt:
            self.count += 1

    # ---------------------------------------------------------------- window boundaries

    def _pieces(self):
        """(chunk slice, the shift δ·mean F̂ of its tensor per chain, whether that tensor saw
        any gradient) over the whole vector: each parameter tensor cut into chunks."""
        start = 0
        for size in self.segments:
            seg = slice(start, start + size)
            mean = self.S[..., seg].sum(dim=-1, keepdim=True).div_(self.count * size)
            shift, seen = mean * self.damping, mean > 0
            for sub in spans(self.S[..., seg]):
                sl = seg if sub is None else slice(start + sub.start, start + sub.stop)
                yield sl, shift, seen
            start += size

    def start_(self, per_tensor: Tensor) -> None:
        """A ← ``per_tensor[t]`` on every coordinate of parameter tensor t, before the first
        window (one chain's view; :func:`hf_llc.sampling.chain.fisher_start` computes it)."""
        if self.frozen or self.count:
            raise RuntimeError("the Fisher preconditioner's start is set before its first window.")
        sizes = torch.tensor(self.segments, device=self.A_now.device)
        self.A_now.copy_(per_tensor.to(self.A_now.dtype).repeat_interleave(sizes))

    def refresh(self) -> None:
        """A ← 1/(F̂ + δ·mean F̂) from the window since the last refresh, the mean taken over
        each parameter tensor (so the damping is equivariant to per-tensor rescaling); A grows
        at most ``GROWTH``-fold, and a tensor whose window saw only zero gradients keeps its A.
        A new window starts."""
        if self.frozen:
            raise RuntimeError("the Fisher preconditioner is frozen; it no longer adapts.")
        if self.count:
            for sl, shift, seen in self._pieces():
                new = part(self.S, sl).div(self.count).add_(shift).reciprocal_()
                a = part(self.A_now, sl)
                a.copy_(torch.where(seen, torch.minimum(new, a * self.GROWTH), a))
        self.S.zero_()
        self.count = 0

    def freeze(self) -> None:
        """The last refresh: S ← √A, the separate A dropped; A is constant from now on."""
        if self.frozen:
            return
        if self.count:
            for sl, shift, seen in self._pieces():
                s = part(self.S, sl)
                old = part(self.A_now, sl)
                s.div_(self.count).add_(shift).reciprocal_()
                s.copy_(torch.where(seen, torch.minimum(s, old * self.GROWTH), old)).sqrt_()
        else:
            self.S.copy_(self.A_now).sqrt_()
        self.A_now = None
        self.count = 0
        self.frozen = True

    # -------------------------------------------------------------- off the hot path

    @property
    def A(self) -> Tensor:  # noqa: N802
        return self.S.square() if self.frozen else self.A_now.clone()

    @property
    def A_sqrt(self) -> Tensor:  # noqa: N802
        return self.S.clone() if self.frozen else self.A_now.clone().sqrt_()

    @property
    def metric(self) -> Tensor | None:
        """M = 1/(nβ·A), the localizer's metric (allocates); ``None`` when it is Euclidean."""
        if self.euclidean:
            return None
        return self.A.mul_(self.nbeta).reciprocal_()

    def row(self, i: int) -> FisherPreconditioner:
        if self.S.ndim == 1:
            return self
        view = FisherPreconditioner.__new__(FisherPreconditioner)
        view.nbeta, view.damping, view.count, view.frozen, view.segments = (
            self.nbeta,
            self.damping,
            self.count,
            self.frozen,
            self.segments,
        )
        view.euclidean = self.euclidean
        view.S = self.S[i]
        view.A_now = None if self.A_now is None else self.A_now[i]
        return view

    def state_dict(self) -> dict:
        state = {"S": self.S, "count": self.count, "frozen": self.frozen}
        if self.A_now is not None:
            state["A_now"] = self.A_now
        return state

    def load_state_dict(self, state: dict) -> None:
        self.S.copy_(state["S"])
        self.count = int(state["count"])
        self.frozen = bool(state["frozen"])
        if self.frozen:
            self.A_now = None
        else:
            self.A_now.copy_(state["A_now"])


def make_preconditioner(
    cfg,
    like: Tensor,
    *,
    nbeta: float,
    diagonal: Tensor | None = None,
    segments: list[int] | None = None,
) -> Preconditioner:
    """The preconditioner ``cfg.preconditioner`` names, for one chain (``like`` (d,)) or a stack
    (chains × d); ``diagonal`` is a user-given A (shared by every chain); ``segments`` the sizes
    of the parameter tensors in the flat vector (the Fisher diagonal's damping is per tensor)."""
    name = cfg.preconditioner
    if isinstance(name, str) and name.startswith("rmsprop"):
        return RMSPropPreconditioner(like, cfg.rmsprop_decay, cfg.rmsprop_eps)
    if isinstance(name, str) and name.startswith("fisher"):
        euclidean = getattr(cfg, "localizer", "preconditioner") == "euclidean"
        return FisherPreconditioner(like, nbeta, cfg.fisher_damping, segments, euclidean=euclidean)
    if diagonal is not None:
        return DiagonalPreconditioner(diagonal)
    return Preconditioner()

r"""Gradient engines: how the gradients of a stack of C chains are computed.

Both evaluate, for the chains' rows of W (C × d) and their own minibatches,

    (∇L_{B_t^c}(w_t^c), L_{B_t^c}(w_t^c))   for c = 1..C.

* :class:`EagerEngine` (one chain): a plain forward and backward, through the problem's
  parameter-binding fast path (``problem.bind``) when it has one, as a training step does.
* :class:`VmapEngine` (any C): the loss under ``torch.func.vmap`` over the chain dimension, one
  ``vmap`` forward and one backward for all chains, the minibatches stacked C × m.

A chain consumes its own generator in the same order whichever engine computes its gradients,
so a chain's trace under the vmap engine equals its eager trace up to float rounding (a batched
matrix product may round differently from a plain one). Models that cannot run under ``vmap``
(data-dependent Python control flow, in-place updates of inputs, ``.item()``) or whose
minibatches are not tensors with a leading sample dimension are detected by
:func:`check_batchable` and run with the eager engine.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol

import torch
from torch import Tensor

from .chain import LossProblem, _grad, transform_context
from .config import SamplerConfig


class NotBatchable(Exception):
    """The problem cannot run its chains under ``vmap`` (the message says why)."""


def stack_batches(problem: LossProblem, indices: Tensor) -> Any:
    """The minibatches of C chains, ``indices`` (C × m), as one batch with a leading chain dim.

    One gather for all chains (``problem.batch`` of the concatenated indices), then every
    tensor is viewed as (C, m, …). Raises :class:`NotBatchable` for batches that are not a
    tensor or a mapping of tensors with one row per sample.
    """
    c, m = indices.shape
    flat = problem.batch(indices.reshape(-1))

    def split(value: Any, name: str) -> Tensor:
        if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[0] != c * m:
            raise NotBatchable(
                f"batch entry {name!r} is not a tensor with one row per sample "
                f"({type(value).__name__})"
            )
        return value.view(c, m, *value.shape[1:])

    if isinstance(flat, Tensor):
        return split(flat, "batch")
    if isinstance(flat, Mapping):
        return {k: split(v, k) for k, v in flat.items()}
    raise NotBatchable(f"batches of type {type(flat).__name__} cannot be stacked over chains")


def batched_grad_fn(problem: LossProblem, compile: bool = False):
    """``f(W, batches) -> (G, L)``: per-chain gradient and mean loss of C chains at once.

    ``W`` is C × d, ``batches`` has a leading chain dimension (:func:`stack_batches`); ``G``
    is C × d and ``L`` has C entries. The forward is ``vmap``-ped over chains and the backward
    is ordinary autograd of Σ_c L_c, whose gradient with respect to row c of W is ∇L_c (the
    chains share no parameters). ``compile=True`` compiles the vmapped forward with
    ``torch.compile`` (its backward is compiled with it).
    """

    def mean_loss(w: Tensor, batch: Any) -> Tensor:
        per = problem.loss(w, batch)
        return per.mean() if per.ndim else per

    forward = torch.func.vmap(mean_loss)
    if compile:
        forward = torch.compile(forward, dynamic=False)

    def grad_and_loss(W: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        leaf = W.detach().requires_grad_(True)
        with torch.enable_grad():
            L = forward(leaf, batch)
            (G,) = torch.autograd.grad(L.sum(), leaf)
        return G, L.detach()

    return grad_and_loss


def check_batchable(
    problem: LossProblem, w_star: Tensor, cfg: SamplerConfig, num_chains: int, grad_fn
) -> None:
    """Run one batched gradient at w* for ``num_chains`` chains and compare chain 0 with the
    sequential gradient; raise :class:`NotBatchable` (with the reason) if either fails."""
    m = cfg.batch_size
    idx = torch.arange(m).repeat(num_chains, 1)
    try:
        batch = stack_batches(problem, idx)
        W = w_star.expand(num_chains, -1).clone()
        with transform_context(problem):
            G, L = grad_fn(W, batch)
    except NotBatchable:
        raise
    except Exception as err:  # vmap raises many kinds of errors for unsupported models
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise NotBatchable(f"{type(err).__name__}: {first[:200]}") from err
    _, _, loss, g = _grad(problem, w_star, problem.batch(idx[0]))
    if G.shape != W.shape or L.shape != (num_chains,):
        raise NotBatchable(f"the vmapped gradient has shape {tuple(G.shape)}, not (C, d)")
    # A gross-error check (a model that mixes samples or chains is off by O(1)), loose enough
    # for bf16 autocast, where a batched matmul may round differently from a plain one.
    gap, size = float((G[0] - g).norm()), float(g.norm())
    if gap > 1e-2 * size + 1e-6:
        raise NotBatchable(
            f"the vmapped gradient differs from the plain one ({gap / max(size, 1e-30):.2g} "
            "relative, limit 0.01)"
        )
    loss = float(loss.detach())
    if abs(float(L[0]) - loss) > 1e-2 * abs(loss) + 1e-6:
        raise NotBatchable(
            f"the vmapped loss differs from the plain one ({float(L[0]):.6g} against {loss:.6g})"
        )


class Engine(Protocol):
    """How a stack of chains gets its gradients (see the module docstring).

    ``stacked``: whether the SGLD step runs as one update of all rows with per-chain
    coefficients (:func:`hf_llc.sampling.sgld.sgld_step_chains_`) rather than the step of one
    chain (:func:`hf_llc.sampling.sgld.sgld_step_`).
    """

    stacked: bool

    def open(self, W: Tensor) -> Any:
        """A context manager around the whole run of the stack ``W`` (C × d)."""

    def batch(self, indices: Tensor) -> Any:
        """The minibatches of the stack's chains, as the engine wants them; ``indices`` is
        C × m for a stacked engine, one chain's (m,) otherwise."""

    def row_batch(self, batch: Any, indices: Tensor, i: int) -> Any:
        """Chain ``i``'s own minibatch (for its step-size measurement)."""

    def grad(self, W: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        """(G, L): per-chain gradients (C × d, the SGLD step may overwrite them) and mean
        losses (C; a 0-d tensor for an unstacked engine), on the hot path."""

    def fresh_grad(self, W: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        """The same in fresh buffers, off the hot path (MALA's second evaluation)."""


class EagerEngine:
    """One chain (C = 1): a plain forward and backward, bound to the chain's own buffer
    (``problem.bind``) when the problem has that fast path."""

    stacked = False

    def __init__(self, problem: LossProblem):
        self.problem = problem
        self._fast = None

    @contextmanager
    def open(self, W: Tensor) -> Iterator[None]:
        bind = getattr(self.problem, "bind", None)
        with bind(W[0]) if bind is not None else nullcontext() as fast:
            self._fast = fast
            try:
                yield
            finally:
                self._fast = None

    def batch(self, indices: Tensor) -> Any:
        return self.problem.batch(indices)

    def row_batch(self, batch: Any, indices: Tensor, i: int) -> Any:
        return batch

    def grad(self, W: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        if self._fast is not None:
            _, loss, g = self._fast(batch)
        else:
            _, _, loss, g = _grad(self.problem, W[0], batch)
        return g.unsqueeze(0), loss.detach()

    def fresh_grad(self, W: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        _, _, loss, g = _grad(self.problem, W[0], batch)
        return g.unsqueeze(0), loss.detach()


class VmapEngine:
    """Any number of chains under ``torch.func.vmap`` (:func:`batched_grad_fn`)."""

    stacked = True

    def __init__(self, problem: LossProblem, grad_fn: Any = None, *, compile: bool = False):
        self.problem = problem
        self.grad_fn = grad_fn if grad_fn is not None else batched_grad_fn(problem, compile)

    def open(self, W: Tensor) -> Any:
        # The whole run in the problem's transform context (entered once, not per step): the
        # vmapped gradients need it, and the curvature measurements, which a sequential chain
        # also makes in it, are then the same in both modes.
        return transform_context(self.problem)

    def batch(self, indices: Tensor) -> Any:
        return stack_batches(self.problem, indices)

    def row_batch(self, batch: Any, indices: Tensor, i: int) -> Any:
        return self.problem.batch(indices[i])

    def grad(self, W: Tensor, batch: Any) -> tuple[Tensor, Tensor]:
        return self.grad_fn(W, batch)

    fresh_grad = grad

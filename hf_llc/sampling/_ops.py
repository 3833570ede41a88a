"""In-place element-wise helpers of the SGLD step (flat vectors or stacks of chains)."""

from __future__ import annotations

import torch
from torch import Tensor

#: Elements per chunk of the chunked element-wise passes on the CPU (1 MiB of fp32 per
#: operand: a chunk's operands stay in cache from one operation to the next, and the per-chunk
#: Python overhead, a few microseconds per operation, stays small against the arithmetic).
CHUNK = 1 << 18
#: The same on accelerators (64 MiB of fp32), where each operation is a kernel launch: chunks
#: only bound the temporaries, so a 10⁸-parameter chain takes a handful of launches per pass.
DEVICE_CHUNK = 1 << 24


def spans(t: Tensor) -> list[slice | None]:
    """Slices of the last dimension of ``t`` covering about :data:`CHUNK` elements each
    (:data:`DEVICE_CHUNK` off the CPU); ``[None]`` when one chunk covers ``t`` (then
    :func:`part` returns ``t`` itself, sparing small models the views)."""
    d = t.shape[-1]
    rows = max(1, t.numel() // max(d, 1))
    step = max(1, (CHUNK if t.device.type == "cpu" else DEVICE_CHUNK) // rows)
    if step >= d:
        return [None]
    return [slice(start, min(start + step, d)) for start in range(0, d, step)]


def part(t: Tensor, sl: slice | None) -> Tensor:
    """``t[..., sl]`` (a view), or ``t`` for ``sl = None``."""
    return t if sl is None else t[..., sl]


def total(values: list[Tensor]) -> Tensor:
    """The sum of per-chunk partial sums."""
    return values[0] if len(values) == 1 else torch.stack(values).sum(dim=0)


def axpy_(y: Tensor, x: Tensor, a: float | Tensor) -> None:
    """``y ← y + a·x`` in place; ``a`` a number or a tensor broadcasting against ``y``
    (per-chain coefficients of shape (chains, 1))."""
    if isinstance(a, Tensor):
        y.addcmul_(x, a)
    else:
        y.add_(x, alpha=a)


def potential_grad_(
    grad: Tensor, w: Tensor, w_star: Tensor, *, nbeta: float, localization: float
) -> Tensor:
    """``grad ← nβ·grad + γ·(w − w*)`` = ∇U(w), in place (w − w* a chunk at a time, so no
    parameter-sized temporary); returns ``grad``."""
    for sl in spans(grad):
        _potential_grad_chunk_(part(grad, sl), part(w, sl), part(w_star, sl), nbeta, localization)
    return grad


def _potential_grad_chunk_(g: Tensor, w: Tensor, w_star: Tensor, nbeta, localization) -> None:
    g.mul_(nbeta)
    if localization:
        g.add_(torch.sub(w, w_star), alpha=localization)

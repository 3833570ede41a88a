"""Attention that runs under ``torch.func.vmap``, for batched chains of transformers.

``transformers`` builds attention masks with shortcuts that read tensor values: when no token
is padded it skips the mask and lets SDPA's ``is_causal`` flag do the work
(``masking_utils._ignore_causal_mask_sdpa`` and its bidirectional twin call ``.all()`` on the
padding mask). Under ``vmap`` that is data-dependent control flow, which vmap refuses, so every
GPT-2-, Llama- or BERT-style model used to fall back to sequential chains.

This module registers one more attention implementation with transformers' public
``AttentionInterface``/``AttentionMaskInterface``, :data:`BATCHED_ATTENTION`: the same SDPA
attention function and the same mask builder with both shortcuts turned off, so the mask is
always built from index arithmetic and the padding mask, with no branch on values. SDPA runs on
its math backend there, which has vmap batching rules on every device and supports the double
backward of the curvature estimates. The mask is exact (a boolean mask of the same positions the
shortcut would have used), so the loss equals the plain model's up to float rounding.

:func:`batched_attention` switches a model that uses ``"sdpa"`` to it for the duration of a
batched run and back afterwards; models on other implementations (eager, flash, flex) are left
as they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

#: The name the batched attention is registered under in transformers' interfaces.
BATCHED_ATTENTION = "hf_llc_batched"

_registered = False


def _mask(*args: Any, **kwargs: Any):
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


def _attention(module: nn.Module, query, key, value, *args: Any, **kwargs: Any):
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    device = query.device.type
    if torch.is_autocast_enabled(device):
        # Autocast casts SDPA's inputs to its dtype; under vmap that cast is not applied, and
        # rotary embeddings leave query and key in fp32 next to a bf16 value: cast as it would.
        dtype = torch.get_autocast_dtype(device)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    with sdpa_kernel(SDPBackend.MATH):
        return sdpa_attention_forward(module, query, key, value, *args, **kwargs)


def register() -> None:
    """Register :data:`BATCHED_ATTENTION` with transformers (once per process)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(BATCHED_ATTENTION, _attention)
    AttentionMaskInterface.register(BATCHED_ATTENTION, _mask)
    _registered = True


def sdpa_models(model: nn.Module) -> list[nn.Module]:
    """The transformers models in ``model`` (itself, or inside a wrapper such as peft's) whose
    attention is ``"sdpa"`` and can be switched at run time; outermost first, nested ones
    (sub-models of one switched model share its switch) left out."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return []
    found: list[nn.Module] = []
    for module in model.modules():
        if not isinstance(module, PreTrainedModel):
            continue
        if any(module in outer.modules() for outer in found):
            continue
        config = getattr(module, "config", None)
        if getattr(config, "_attn_implementation", None) != "sdpa":
            continue
        if not type(module)._can_set_attn_implementation():
            continue
        found.append(module)
    return found


@contextmanager
def batched_attention(model: nn.Module, models: list[nn.Module] | None = None) -> Iterator[None]:
    """Within the block, the model's SDPA attention is :data:`BATCHED_ATTENTION` (vmap-able,
    see the module docstring); afterwards it is ``"sdpa"`` again. Other models: no change.
    ``models``: :func:`sdpa_models` of ``model`` when the caller has it already."""
    models = sdpa_models(model) if models is None else models
    if not models:
        yield
        return
    register()
    switched = []
    try:
        for module in models:
            module.set_attn_implementation(BATCHED_ATTENTION)
            switched.append(module)
        yield
    finally:
        for module in reversed(switched):
            module.set_attn_implementation("sdpa")

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

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

#: The name the batched attention is registered under in transformers' interfaces.
BATCHED_ATTENTION = "hf_llc_batched"

#: transformers' SDPA mask builder and attention function, bound by :func:`register` (the two
#: functions below are only reachable once registered), so no import runs per attention call.
_sdpa: dict[str, Any] = {}


def _mask(*args: Any, **kwargs: Any):
    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return _sdpa["mask"](*args, **kwargs)


def _attention(module: nn.Module, query, key, value, *args: Any, **kwargs: Any):
    device = query.device.type
    if torch.is_autocast_enabled(device):
        # Autocast casts SDPA's inputs to its dtype; under vmap that cast is not applied, and
        # rotary embeddings leave query and key in fp32 next to a bf16 value: cast as it would.
        dtype = torch.get_autocast_dtype(device)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    with sdpa_kernel(SDPBackend.MATH):
        return _sdpa["attention"](module, query, key, value, *args, **kwargs)


def register() -> None:
    """Register :data:`BATCHED_ATTENTION` with transformers (once per process)."""
    if _sdpa:
        return
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    _sdpa.update(mask=sdpa_mask, attention=sdpa_attention_forward)
    AttentionInterface.register(BATCHED_ATTENTION, _attention)
    AttentionMaskInterface.register(BATCHED_ATTENTION, _mask)


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
    Nested use is safe: an inner block within an outer one changes nothing.
    ``models``: :func:`sdpa_models` of ``model`` when the caller has it already."""
    models = sdpa_models(model) if models is None else models
    # Only those on SDPA now: inside an enclosing switch (a curvature measurement within a
    # batched run) there is nothing to do, and the exit leaves the enclosing switch in place.
    todo = [m for m in models if m.config._attn_implementation == "sdpa"]
    if not todo:
        yield
        return
    register()
    switched = []
    try:
        for module in todo:
            module.set_attn_implementation(BATCHED_ATTENTION)
            switched.append(module)
        yield
    finally:
        for module in reversed(switched):
            module.set_attn_implementation("sdpa")

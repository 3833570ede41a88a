"""peft adapters (LoRA and the other methods of the ``peft`` library) in hf_llc.

The LLC of an adapter is the LLC of the fine-tuned model as a function of the adapter's
weights alone: the base model's weights are fixed at their values and only the adapter's
trainable parameters are sampled (:func:`hf_llc.estimate_llc` samples the parameters with
``requires_grad=True``, and a peft model loaded for training has exactly the adapter's).
:func:`hf_llc.load_checkpoint` loads an adapter folder that way; :func:`adapter_info`
describes the adapter for ``result.diagnostics["adapter"]``.

peft is an optional dependency (``pip install hf-llc[peft]``): it is imported only when a
model may be a peft model (peft already imported) or an adapter folder is loaded.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["adapter_info", "frozen_adapter_hint", "is_peft_model", "require_peft"]


def require_peft(why: str) -> Any:
    """The ``peft`` module, or an ``ImportError`` saying how to install it and ``why``."""
    try:
        import peft
    except ImportError as err:
        raise ImportError(
            f"{why} needs the peft library: pip install 'hf-llc[peft]' (or pip install peft)."
        ) from err
    return peft


def is_peft_model(model: Any) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (without importing peft: a model can only be
    one if peft is already imported)."""
    peft = sys.modules.get("peft")
    cls = getattr(peft, "PeftModel", None) if peft is not None else None
    return cls is not None and isinstance(model, cls)


def _plain(value: Any) -> Any:
    """Sets (peft keeps ``target_modules`` as one) as sorted lists; enums as their value."""
    if isinstance(value, (set, frozenset)):
        return sorted(str(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return getattr(value, "value", value)


def adapter_info(model: Any) -> dict[str, Any] | None:
    """The active adapter of a peft model, or ``None`` for any other model.

    Returns ``{"peft_type", "base_model", "r", "lora_alpha", "target_modules", "task_type",
    "num_adapter_params", "num_trainable_params", "adapter_name"}``: the method (``"LORA"``…),
    the base model's name or path (``base_model_name_or_path``), the rank and scaling (``None``
    for methods without them), the adapted modules, the peft task type, the number of the
    adapter's parameters (its saved state: what ``save_pretrained`` writes) and of the
    model's trainable ones (what :func:`hf_llc.estimate_llc` samples).
    """
    if not is_peft_model(model):
        return None
    from peft import get_peft_model_state_dict

    name = getattr(model, "active_adapter", None) or "default"
    if isinstance(name, (list, tuple)):  # several active adapters: describe the first
        name = name[0]
    config = model.peft_config[name]
    state = get_peft_model_state_dict(model, adapter_name=name)
    return {
        "peft_type": _plain(getattr(config, "peft_type", None)),
        "base_model": getattr(config, "base_model_name_or_path", None),
        "r": getattr(config, "r", None),
        "lora_alpha": getattr(config, "lora_alpha", None),
        "target_modules": _plain(getattr(config, "target_modules", None)),
        "task_type": _plain(getattr(config, "task_type", None)),
        "num_adapter_params": int(sum(t.numel() for t in state.values())),
        "num_trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "adapter_name": name,
    }


def frozen_adapter_hint(model: Any) -> str:
    """For the "no trainable parameters" error: how to load a peft model's adapter trainable
    (peft loads adapters frozen, for inference, by default); empty for other models."""
    if not is_peft_model(model):
        return ""
    return (
        " It is a peft model whose adapter is frozen (peft loads adapters for inference by "
        "default): load it with PeftModel.from_pretrained(base, path, is_trainable=True), or "
        "with hf_llc.load_checkpoint(path), so that the adapter's weights are sampled."
    )

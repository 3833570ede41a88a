"""Integrations with training libraries: :class:`~hf_llc.integrations.trainer.LLCCallback`
(imported on first use: it loads the Trainer stack)."""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {"LLCCallback": ".trainer"})

if TYPE_CHECKING:
    from .trainer import LLCCallback

__all__ = ["LLCCallback"]

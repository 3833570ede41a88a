"""Integrations with training libraries: :class:`~hf_llc.integrations.trainer.LLCCallback`."""

from .trainer import LLCCallback

__all__ = ["LLCCallback"]

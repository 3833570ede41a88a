"""Chains spread over processes with ``accelerate``, and mixed precision.

- **Assignment.** Chain c runs on process c mod P. A chain's trace depends only on
  (seed, c) and the data (its generator is seeded from them), so the gathered result is the
  same for any number of processes, and an idle process (more processes than chains) only
  takes part in the gather.
- **Never ``accelerator.prepare()``** the model or the data for chains: DDP would average the
  gradients of different chains (different posterior samples) across processes, and a
  prepared dataloader would shard each chain's data so that no chain sees the whole dataset.
  Each process runs whole, independent chains on its own device; only the finished results
  (traces and diagnostics, on the CPU) cross processes, with ``gather_object``.
- **Mixed precision.** ``"bf16"`` runs forward and backward under ``torch.autocast``; the
  parameters, w*, the noise, the preconditioner and the update stay fp32 (an SGLD step of
  √ε ≈ 1e-3 is below bf16's resolution for weights ≈ 1). ``"fp16"`` is not used for
  sampling: nβ·∇L spans many orders of magnitude over a run, and fp16's narrow exponent range
  under- and overflows without loss scaling, which would silently bias the chain (bf16 has
  fp32's range). Asked for fp16, from the argument, the accelerator or
  ``ACCELERATE_MIXED_PRECISION`` (e.g. a Trainer training in fp16), the chains run in fp32
  and a warning is logged once per estimate; the CLI, :func:`hf_llc.estimate_llc` and
  :class:`hf_llc.LLCCallback` all take this one path. (A model whose *weights* are float16 is
  a different matter, refused by :func:`hf_llc.checks.check_parameter_dtypes`.)
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any

import torch

from ._logging import get_logger

logger = get_logger(__name__)

MIXED_PRECISION = ("no", "bf16", "fp16")
_ENV = "ACCELERATE_MIXED_PRECISION"


class ProcessInfo:
    """Which process this is, of how many, on which device (single process: the model's)."""

    def __init__(self, state: Any | None, model_device: torch.device):
        self.state = state
        self.num_processes = state.num_processes if state is not None else 1
        self.index = state.process_index if state is not None else 0
        self.device = state.device if state is not None else model_device

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def my_chains(self, num_chains: int) -> list[int]:
        """Chains c ≡ this process's index (mod the number of processes)."""
        return list(range(self.index, num_chains, self.num_processes))

    def wait(self) -> None:
        """A barrier across the processes (a no-op for one process)."""
        if self.num_processes > 1:
            self.state.wait_for_everyone()

    def gather(self, items: list) -> list:
        """Every process's ``items``, concatenated, on every process."""
        if self.num_processes == 1:
            return items
        from accelerate.utils import gather_object

        return gather_object(items)


def process_info(accelerator: Any | None, model_device: torch.device) -> ProcessInfo:
    """From ``accelerator``, or from the environment of ``accelerate launch``/``torchrun``."""
    if accelerator is not None:
        return ProcessInfo(accelerator.state, accelerator.device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState
        from accelerate.utils import str_to_bool

        cpu = bool(str_to_bool(os.environ.get("ACCELERATE_USE_CPU", "0"))) or not (
            torch.cuda.is_available()
        )
        return ProcessInfo(PartialState(cpu=cpu), model_device)
    return ProcessInfo(None, model_device)


def resolve_mixed_precision(mixed_precision: str | None, accelerator: Any | None) -> str:
    """The precision the chains' forward/backward run in: ``"no"`` or ``"bf16"``.

    Taken from the argument, else the accelerator's setting, else
    ``ACCELERATE_MIXED_PRECISION`` (default ``"no"``). ``"fp16"``, wherever it comes from,
    becomes ``"no"`` (fp32) with a logged warning that says how to silence it: fp16 without
    loss scaling would bias the chains (see this module's notes).

    Raises:
        ValueError: a value that is none of ``"no"``, ``"bf16"``, ``"fp16"``.
    """
    value, source = mixed_precision, "mixed_precision"
    if value is None and accelerator is not None:
        value, source = getattr(accelerator, "mixed_precision", None), "the accelerator"
    if value is None:
        value, source = os.environ.get(_ENV, "no"), _ENV
    value = str(value).lower()
    if value not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision={value!r}: use one of {MIXED_PRECISION}.")
    if value == "fp16":
        logger.warning(
            "fp16 mixed precision (from %s) is not used for SGLD, whose gradients (nβ·∇L) "
            "under/overflow in fp16 without loss scaling: sampling in fp32 instead. Pass "
            "mixed_precision='bf16' or 'no' (CLI: --mixed-precision), or set %s=bf16 or no, "
            "to silence this.",
            source,
            _ENV,
        )
        value = "no"
    return value


def autocast(mixed_precision: str, device: torch.device):
    """The autocast context for the forward/backward (a no-op for ``"no"``)."""
    if mixed_precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()

"""hf_llc: the Local Learning Coefficient of Hugging Face models, estimated with SGLD.

    from hf_llc import estimate_llc, SamplerConfig
    result = estimate_llc(model, dataset, SamplerConfig(num_chains=4))
    print(result.summary())

``import hf_llc`` is cheap: each name below imports its submodule (and torch, transformers)
on first use. The deep linear network validation architecture (``model_type="hf_llc_dln"``)
registers with ``AutoConfig``/``AutoModel`` when :mod:`hf_llc.models.dln` is imported, which
any of its names (``hf_llc.DLNConfig``, ``hf_llc.make_dln_problem``, …) and
:func:`load_checkpoint` do.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__

_EXPORTS = {
    "describe_dataset": ".adapters",
    "attention_modules": ".attention_heads",
    "heads": ".attention_heads",
    "CalibrationResult": ".calibration",
    "calibrate_step_size": ".calibration",
    "EstimateInterrupted": ".checkpoint",
    "OutputDirLocked": ".checkpoint",
    "get_verbosity": "._logging",
    "set_verbosity": "._logging",
    "LLCResult": ".estimator",
    "estimate_llc": ".estimator",
    "LLCCallback": ".integrations",
    "load_checkpoint": ".loading",
    "tokenizer_path": ".loading",
    "push_llc_to_hub": ".modelcard",
    "read_llc_from_model_card": ".modelcard",
    "write_llc_to_model_card": ".modelcard",
    "DLNConfig": ".models.dln",
    "DLNModel": ".models.dln",
    "DLNProblem": ".models.dln",
    "dln_learning_coefficient": ".models.dln",
    "dln_truth": ".models.dln",
    "make_dln_problem": ".models.dln",
    "adapter_info": ".peft_support",
    "ReferenceResult": ".reference",
    "reference_llc": ".reference",
    "SamplerConfig": ".sampling",
    "model_targets": ".targets",
    "model_task": ".tasks",
    "normalise_task": ".tasks",
    "run_nonlinear_case": ".validation_nonlinear",
    "run_nonlinear_suite": ".validation_nonlinear",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from ._logging import get_verbosity, set_verbosity
    from .adapters import describe_dataset
    from .attention_heads import attention_modules, heads
    from .calibration import CalibrationResult, calibrate_step_size
    from .checkpoint import EstimateInterrupted, OutputDirLocked
    from .estimator import LLCResult, estimate_llc
    from .integrations import LLCCallback
    from .loading import load_checkpoint, tokenizer_path
    from .modelcard import push_llc_to_hub, read_llc_from_model_card, write_llc_to_model_card
    from .models.dln import (
        DLNConfig,
        DLNModel,
        DLNProblem,
        dln_learning_coefficient,
        dln_truth,
        make_dln_problem,
    )
    from .peft_support import adapter_info
    from .reference import ReferenceResult, reference_llc
    from .sampling import SamplerConfig
    from .targets import model_targets
    from .tasks import model_task, normalise_task
    from .validation_nonlinear import run_nonlinear_case, run_nonlinear_suite

__all__ = [
    "__version__",
    "adapter_info",
    "attention_modules",
    "calibrate_step_size",
    "CalibrationResult",
    "describe_dataset",
    "dln_learning_coefficient",
    "dln_truth",
    "DLNConfig",
    "DLNModel",
    "DLNProblem",
    "estimate_llc",
    "EstimateInterrupted",
    "get_verbosity",
    "heads",
    "LLCCallback",
    "LLCResult",
    "load_checkpoint",
    "make_dln_problem",
    "model_targets",
    "model_task",
    "normalise_task",
    "OutputDirLocked",
    "push_llc_to_hub",
    "read_llc_from_model_card",
    "reference_llc",
    "ReferenceResult",
    "run_nonlinear_case",
    "run_nonlinear_suite",
    "SamplerConfig",
    "set_verbosity",
    "tokenizer_path",
    "write_llc_to_model_card",
]

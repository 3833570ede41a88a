"""hf_llc: the Local Learning Coefficient of Hugging Face models, estimated with SGLD.

    from hf_llc import estimate_llc, SamplerConfig
    result = estimate_llc(model, dataset, SamplerConfig(num_chains=4))
    print(result.summary())

Importing the package registers the deep linear network validation architecture
(``model_type="hf_llc_dln"``) with ``AutoConfig``/``AutoModel``.
"""

from ._version import __version__
from .calibration import CalibrationResult, calibrate_step_size
from .checkpoint import EstimateInterrupted, OutputDirLocked
from .estimator import LLCResult, estimate_llc
from .integrations import LLCCallback
from .loading import load_checkpoint
from .modelcard import read_llc_from_model_card, write_llc_to_model_card
from .models.dln import (
    DLNConfig,
    DLNModel,
    DLNProblem,
    dln_learning_coefficient,
    dln_truth,
    make_dln_problem,
)
from .sampling import SamplerConfig
from .targets import model_targets

__all__ = [
    "CalibrationResult",
    "DLNConfig",
    "DLNModel",
    "DLNProblem",
    "LLCCallback",
    "EstimateInterrupted",
    "LLCResult",
    "OutputDirLocked",
    "SamplerConfig",
    "__version__",
    "calibrate_step_size",
    "dln_learning_coefficient",
    "dln_truth",
    "estimate_llc",
    "load_checkpoint",
    "make_dln_problem",
    "model_targets",
    "read_llc_from_model_card",
    "write_llc_to_model_card",
]

"""Deep linear networks: model, exact learning coefficients and teacher data.

Importing this package registers the architecture with the Auto classes, so a saved DLN loads
with ``AutoConfig.from_pretrained`` / ``AutoModel.from_pretrained`` (model type
``"hf_llc_dln"``). Registration is idempotent: importing or reloading the package again simply
re-registers the current classes.

Exports:
    DLNConfig, DLNModel: the architecture (see :mod:`.configuration_dln`, :mod:`.modeling_dln`).
    make_dln_problem, DLNProblem, dln_truth, DLNTruth: teacher problems with a known λ
        (see :mod:`.data`); rescale_dln: the same function at another point of its
        rescaling symmetries.
    dln_learning_coefficient: Aoyagi's exact λ and multiplicity (see :mod:`.theory`).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel

from .configuration_dln import DLNConfig
from .data import DLNProblem, DLNTruth, dln_truth, make_dln_problem, rescale_dln
from .modeling_dln import DLNModel, DLNOutput, DLNPreTrainedModel
from .theory import dln_learning_coefficient


def _register_auto_classes() -> None:
    """Register DLNConfig/DLNModel with AutoConfig/AutoModel; safe to call any number of times.

    In transformers 5.x ``AutoConfig.register`` raises only when the model type collides with a
    *built-in* one and ``AutoModel.register`` only when the config's class name is a built-in
    one; re-registering a custom type overwrites silently. ``exist_ok=True`` makes the intent
    explicit and keeps a re-import or ``importlib.reload`` (which creates new class objects)
    from failing should a later version check the custom registry too. The newest classes win.
    """
    AutoConfig.register(DLNConfig.model_type, DLNConfig, exist_ok=True)
    AutoModel.register(DLNConfig, DLNModel, exist_ok=True)


_register_auto_classes()

__all__ = [
    "DLNConfig",
    "DLNModel",
    "DLNOutput",
    "DLNPreTrainedModel",
    "DLNProblem",
    "DLNTruth",
    "dln_learning_coefficient",
    "dln_truth",
    "make_dln_problem",
    "rescale_dln",
]

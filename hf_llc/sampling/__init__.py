"""The functional SGLD sampler core: pure tensor code, no Hugging Face imports."""

from .chain import (
    ChainCheckpoint,
    ChainResult,
    ChainState,
    EpochBatcher,
    chain_generator,
    chain_seed,
    max_curvature,
    run_chain,
)
from .config import SamplerConfig
from .preconditioners import (
    DiagonalPreconditioner,
    FisherPreconditioner,
    Preconditioner,
    RMSPropPreconditioner,
    make_preconditioner,
)
from .sgld import mala_acceptance, potential, potential_grad, sgld_step_

__all__ = [
    "ChainCheckpoint",
    "ChainResult",
    "ChainState",
    "DiagonalPreconditioner",
    "EpochBatcher",
    "FisherPreconditioner",
    "Preconditioner",
    "RMSPropPreconditioner",
    "SamplerConfig",
    "chain_generator",
    "chain_seed",
    "make_preconditioner",
    "mala_acceptance",
    "max_curvature",
    "potential",
    "potential_grad",
    "run_chain",
    "sgld_step_",
]

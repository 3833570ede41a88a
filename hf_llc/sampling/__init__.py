"""The functional SGLD sampler core: pure tensor code, no Hugging Face imports."""

from .chain import (
    ChainCheckpoint,
    ChainResult,
    ChainState,
    EpochBatcher,
    chain_generator,
    chain_seed,
    max_curvature,
)
from .config import SamplerConfig
from .loop import ChainStore, run_chain, run_chains, run_stack
from .posterior import LocalPosterior
from .preconditioners import (
    DiagonalPreconditioner,
    FisherPreconditioner,
    Preconditioner,
    RMSPropPreconditioner,
    make_preconditioner,
)
from .sgld import mala_acceptance, potential, potential_grad, sgld_step_, sgld_step_chains_
from .state import ChainStack

__all__ = [
    "ChainCheckpoint",
    "ChainResult",
    "ChainStack",
    "ChainState",
    "ChainStore",
    "DiagonalPreconditioner",
    "EpochBatcher",
    "FisherPreconditioner",
    "LocalPosterior",
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
    "run_chains",
    "run_stack",
    "sgld_step_",
    "sgld_step_chains_",
]

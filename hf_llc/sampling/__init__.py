"""The functional SGLD sampler core: pure tensor code, no Hugging Face imports.

Names are imported from their submodules on first use, so :class:`SamplerConfig` (in
:mod:`.config`, no torch) can be had without loading torch.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "ChainCheckpoint": ".chain",
    "ChainResult": ".chain",
    "ChainState": ".chain",
    "EpochBatcher": ".chain",
    "chain_generator": ".chain",
    "chain_seed": ".chain",
    "max_curvature": ".chain",
    "SamplerConfig": ".config",
    "ChainStore": ".loop",
    "run_chain": ".loop",
    "run_chains": ".loop",
    "run_stack": ".loop",
    "LocalPosterior": ".posterior",
    "DiagonalPreconditioner": ".preconditioners",
    "FisherPreconditioner": ".preconditioners",
    "Preconditioner": ".preconditioners",
    "RMSPropPreconditioner": ".preconditioners",
    "make_preconditioner": ".preconditioners",
    "mala_acceptance": ".sgld",
    "potential": ".sgld",
    "potential_grad": ".sgld",
    "sgld_step_": ".sgld",
    "sgld_step_chains_": ".sgld",
    "ChainStack": ".state",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
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
    "chain_generator",
    "chain_seed",
    "ChainCheckpoint",
    "ChainResult",
    "ChainStack",
    "ChainState",
    "ChainStore",
    "DiagonalPreconditioner",
    "EpochBatcher",
    "FisherPreconditioner",
    "LocalPosterior",
    "make_preconditioner",
    "mala_acceptance",
    "max_curvature",
    "potential",
    "potential_grad",
    "Preconditioner",
    "RMSPropPreconditioner",
    "run_chain",
    "run_chains",
    "run_stack",
    "SamplerConfig",
    "sgld_step_",
    "sgld_step_chains_",
]

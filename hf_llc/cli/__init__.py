"""``hf-llc`` command line: ``estimate`` the LLC of a checkpoint, ``calibrate`` its step size,
``validate`` the estimator against exact theory.

Also runnable as ``python -m hf_llc``. :mod:`.arguments` holds the parser (the sampler flags
generated from :class:`~hf_llc.SamplerConfig`), :mod:`.inputs` what the commands load, and
:mod:`.commands` the commands themselves.
"""

from .arguments import (
    add_checkpoint_arguments,
    add_sampler_arguments,
    build_parser,
    config_from_args,
)
from .commands import main
from .inputs import TOKENIZER_FILES, load_data, load_inputs, load_tokenizer

__all__ = [
    "TOKENIZER_FILES",
    "add_checkpoint_arguments",
    "add_sampler_arguments",
    "build_parser",
    "config_from_args",
    "load_data",
    "load_inputs",
    "load_tokenizer",
    "main",
]

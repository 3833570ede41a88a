"""``hf-llc`` command line: ``estimate`` the LLC of a checkpoint, ``calibrate`` its step size,
``validate`` the estimator against exact theory.

Also runnable as ``python -m hf_llc``. :mod:`.arguments` holds the parser (every flag a
dataclass field: :class:`~hf_llc.SamplerConfig`'s and the commands' own), :mod:`.inputs` what
the commands load, and :mod:`.commands` the commands themselves.
"""

from .arguments import COMMAND_ARGUMENTS, build_parser, config_from_args, parse_args
from .commands import main
from .inputs import TOKENIZER_FILES, load_data, load_inputs, load_tokenizer

__all__ = [
    "TOKENIZER_FILES",
    "COMMAND_ARGUMENTS",
    "build_parser",
    "config_from_args",
    "load_data",
    "load_inputs",
    "load_tokenizer",
    "main",
    "parse_args",
]

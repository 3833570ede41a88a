"""The ``hf-llc`` argument parser, and the :class:`SamplerConfig` its sampler flags make.

Every sampler flag is generated from a :class:`SamplerConfig` field listed once in
:data:`SAMPLER_FLAGS`; its flag name, type and default (``None``: the config's default) come
from the field.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import Field, dataclass, fields
from pathlib import Path
from typing import Any

from ..sampling import SamplerConfig
from ..sampling.config import CHAIN_MODES, PRECONDITIONERS


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 7,4,6,5, got {text!r}"
        ) from err
    if len(values) < 2:
        raise argparse.ArgumentTypeError("--widths needs at least two widths (input, output)")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated step sizes like 1e-5,3e-5,1e-4, got {text!r}"
        ) from err
    if not values:
        raise argparse.ArgumentTypeError("--grid needs at least one step size")
    return values


def _step_size(text: str):
    if text in ("curvature", "auto"):
        return text
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--step-size takes a positive number, 'curvature' or 'auto', got {text!r}"
        ) from err


@dataclass(frozen=True)
class SamplerFlag:
    """How one :class:`SamplerConfig` field is set from the command line.

    Attributes:
        help: the flag's help text.
        flag: the flag when it is not ``--field-name``.
        type: the parser of its value when not the field's own ``int`` or ``float``.
        choices: the values it accepts, if only some.
    """

    help: str | None = None
    flag: str | None = None
    type: Callable[[str], Any] | None = None
    choices: Sequence[str] | None = None


#: The :class:`SamplerConfig` fields the command line sets, in ``--help`` order.
SAMPLER_FLAGS: dict[str, SamplerFlag] = {
    "step_size": SamplerFlag(
        "ε, 'curvature' (default) or 'auto' (pilot chains choose ε; see hf-llc calibrate)",
        type=_step_size,
    ),
    "step_scale": SamplerFlag("c in ε = c / λ_max (curvature step size)"),
    "localization": SamplerFlag("γ"),
    "nbeta": SamplerFlag("nβ (default n / log n)"),
    "num_chains": SamplerFlag(),
    "num_draws": SamplerFlag(),
    "num_burnin": SamplerFlag(),
    "draw_every": SamplerFlag(),
    "batch_size": SamplerFlag(),
    "preconditioner": SamplerFlag(choices=PRECONDITIONERS),
    "seed": SamplerFlag("seed of the chains (default 0)", flag="--sampler-seed"),
    "mala": SamplerFlag("record MALA acceptance (diagnostic)"),
    "chain_mode": SamplerFlag(
        "run a process's chains one after another (default 'sequential'), batched under "
        "torch.func.vmap, or 'auto' (batched when possible)",
        choices=CHAIN_MODES,
    ),
    "compile": SamplerFlag("torch.compile the loss and gradient"),
}


def _sampler_fields() -> list[tuple[Field, SamplerFlag]]:
    """The :class:`SamplerConfig` field of every entry of :data:`SAMPLER_FLAGS`."""
    by_name = {f.name: f for f in fields(SamplerConfig)}
    return [(by_name[name], flag) for name, flag in SAMPLER_FLAGS.items()]


def _flag_name(field: Field, flag: SamplerFlag) -> str:
    return flag.flag or "--" + field.name.replace("_", "-")


def _dest(field: Field, flag: SamplerFlag) -> str:
    """The attribute of the parsed arguments that holds the field's flag."""
    return _flag_name(field, flag)[2:].replace("-", "_")


def _value_type(field: Field) -> str | None:
    """``"bool"``, ``"int"`` or ``"float"``: the first in the field's annotation, if any."""
    annotation = field.type if isinstance(field.type, str) else str(field.type)
    return next((t for t in re.findall(r"\w+", annotation) if t in ("bool", "int", "float")), None)


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that override :class:`SamplerConfig` fields (defaults: the config's defaults)."""
    g = parser.add_argument_group("sampler (defaults: SamplerConfig defaults)")
    for field, flag in _sampler_fields():
        options: dict[str, Any] = {"help": flag.help}
        kind = _value_type(field)
        if kind == "bool":
            options["action"] = "store_true"
        elif flag.choices is not None:
            options["choices"] = flag.choices
        else:
            options["type"] = flag.type or {"int": int, "float": float}.get(kind)  # else text
        g.add_argument(_flag_name(field, flag), **options)
    g.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default=None,
        help="autocast for forward/backward (default: accelerate's setting; fp16 is refused)",
    )


def config_from_args(args: argparse.Namespace) -> SamplerConfig:
    """The :class:`SamplerConfig` of the sampler flags; a flag not given keeps the default."""
    given = {}
    for field, flag in _sampler_fields():
        value = getattr(args, _dest(field, flag))
        if value is not None and value is not False:  # False: a switch that was not given
            given[field.name] = value
    return SamplerConfig(**given)


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, --dataset and the flags that load them (shared by estimate and calibrate)."""
    parser.add_argument("model", metavar="MODEL", help="Hub id or local checkpoint folder")
    parser.add_argument(
        "--dataset",
        required=True,
        metavar="DATA",
        help="Hub dataset name, a save_to_disk folder, or a json/jsonl/csv/parquet/txt file",
    )
    parser.add_argument("--dataset-config", default=None, help="Hub dataset config")
    parser.add_argument(
        "--split", default=None, help="Hub dataset or save_to_disk split (default train)"
    )
    parser.add_argument("--text-column", default=None, help="raw text column to tokenize")
    parser.add_argument("--max-length", type=int, default=None, help="truncate tokenized text")
    parser.add_argument("--num-samples", type=int, default=None, help="use the first N rows")
    parser.add_argument(
        "--task", default=None, help="model head when config.architectures is unset"
    )
    parser.add_argument("--revision", default=None)
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--allow-pickle", action="store_true", help="allow .bin (pickle) weights")
    parser.add_argument("--allow-missing-weights", action="store_true")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--loss-fn", metavar="MODULE:FUNCTION", help="loss_fn(outputs, batch)")
    group.add_argument(
        "--model-loss-fn", metavar="MODULE:FUNCTION", help="model_loss_fn(model, batch)"
    )


def _add_card_arguments(parser: argparse.ArgumentParser, write_card_help: str) -> None:
    parser.add_argument("--write-card", action="store_true", help=write_card_help)
    parser.add_argument(
        "--card-model-name",
        metavar="NAME",
        help="with --write-card: the model-index model to record in (needed when the card "
        "lists several)",
    )


def _add_validate(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    v = sub.add_parser(
        "validate",
        help="check λ̂ against exact deep-linear-network theory",
        description=(
            "Without --widths, run a built-in suite of deep linear network cases and compare "
            "λ̂ with Aoyagi's exact λ; with --widths/--rank/--construction, run that one case."
        ),
    )
    # hf_llc.validation.SUITES' names (not imported here: it loads the estimator's stack).
    v.add_argument("--suite", choices=["quick", "paper", "heldout"], default="quick")
    v.add_argument("--widths", type=_ints, help="e.g. 7,4,6,5 (input, hidden…, output)")
    v.add_argument("--rank", type=int, help="true rank (origin: 0, full_rank: min width)")
    v.add_argument(
        "--construction",
        choices=["origin", "aligned", "full_rank"],
        default=None,
        help="where w* sits (default: full_rank, or aligned when --rank < min width)",
    )
    v.add_argument("--num-samples", type=int, default=None, help="n (default 100000)")
    v.add_argument("--seed", type=int, default=0, help="seed of the teacher problem")
    v.add_argument(
        "--rescale",
        type=int,
        default=None,
        metavar="SEED",
        help="move each teacher along its rescaling symmetries (per-layer and per-unit factors "
        "in [0.1, 10], drawn from SEED): the same function and λ, a test of invariance",
    )
    v.add_argument("--input-distribution", choices=["normal", "uniform"], default="normal")
    v.add_argument(
        "--loss-type",
        choices=["gaussian_nll", "mse"],
        default="gaussian_nll",
        help="DLN loss: ½·squared error summed over outputs (default) or averaged (mse)",
    )
    v.add_argument("--jobs", type=int, default=None, help="worker processes (default: cores)")
    v.add_argument("--output", type=Path, help="write the results as JSON here")
    v.add_argument("--no-progress", action="store_true")
    add_sampler_arguments(v)
    return v


def _add_estimate(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    e = sub.add_parser(
        "estimate",
        help="estimate the LLC of a checkpoint (Hub id or local folder) on a dataset",
        description="Estimate the LLC of MODEL at its weights on DATA and print a summary.",
    )
    add_checkpoint_arguments(e)
    e.add_argument("--output", type=Path, help="write the result as JSON here")
    _add_card_arguments(e, "record the LLC in MODEL's card")
    e.add_argument("--plot", type=Path, help="save the trace plot (PNG) here")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    ck = e.add_argument_group(
        "checkpoints (long runs)",
        "With --output-dir, every chain's state is saved there periodically; Ctrl-C or SIGTERM "
        "saves and stops (exit code 130 / 143), and the same command with --resume continues "
        "to exactly the result of an uninterrupted run.",
    )
    ck.add_argument(
        "--output-dir", type=Path, metavar="DIR", help="checkpoints, result.json and manifest"
    )
    ck.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    ck.add_argument(
        "--checkpoint-every", type=int, metavar="N", help="also checkpoint every N steps"
    )
    ck.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=None,
        metavar="S",
        help="checkpoint a running chain at least every S seconds (default 300)",
    )
    add_sampler_arguments(e)
    return e


def _add_calibrate(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    c = sub.add_parser(
        "calibrate",
        help="choose the SGLD step size for a checkpoint with short pilot chains",
        description=(
            "Run short pilot chains of MODEL on DATA over a grid of step sizes ε, print the "
            "sweep (pilot λ̂, MALA acceptance, flatness) and the chosen ε: the largest one that "
            "is stable, flat and has MALA acceptance ≥ --min-acceptance. The sampler flags "
            "are the settings the real chains will use (--step-size is ignored)."
        ),
    )
    add_checkpoint_arguments(c)
    c.add_argument(
        "--grid",
        type=_floats,
        help="step sizes to try, e.g. 1e-5,3e-5,1e-4 (default: ε_c·2^k, k = -3..0, at and below "
        "the curvature step ε_c)",
    )
    c.add_argument("--min-acceptance", type=float, default=None, help="default 0.9")
    c.add_argument("--pilot-burnin", type=int, default=None, help="default: --num-burnin")
    c.add_argument("--pilot-draws", type=int, default=None, help="default min(draws, 200)")
    c.add_argument("--output", type=Path, help="write the sweep and the choice as JSON here")
    c.add_argument("--plot", type=Path, help="save λ̂ and acceptance against ε (PNG) here")
    _add_card_arguments(
        c,
        "then estimate the LLC at the chosen ε and record it (with the sweep's choice) in "
        "MODEL's card",
    )
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampler_arguments(c)
    return c


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-llc`` parser: the ``validate``, ``estimate`` and ``calibrate`` commands."""
    parser = argparse.ArgumentParser(
        prog="hf-llc", description="Local Learning Coefficient estimation for Hugging Face models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_validate, _add_estimate, _add_calibrate):
        add(sub).add_argument(
            "--debug",
            action="store_true",
            help="on an error, show the Python traceback instead of one error: line",
        )
    return parser

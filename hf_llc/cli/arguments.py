"""The ``hf-llc`` argument parser, generated from dataclasses.

Every flag is a field of a dataclass: :class:`~hf_llc.SamplerConfig` for the sampler, and the
small dataclasses below for the data, the outputs and each command. A field's
``metadata["help"]`` is its help text (the convention of ``transformers.HfArgumentParser``);
``metadata`` may also hold ``choices``, ``parse`` (the value's parser), ``metavar`` and
``aliases`` (more flag names). Each field ``some_name`` is accepted as ``--some-name`` and
``--some_name``; ``--help`` shows each default.

``--config FILE`` (YAML or JSON, a mapping of the same names) sets any of a command's flags;
flags on the command line override it.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..sampling.config import PRESETS, SamplerConfig, preset_settings

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


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


def _names(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(
            "expected comma-separated case names like relu_duplicated,attention"
        )
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


def _globs(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(
            "expected comma-separated parameter-name patterns like 'transformer.h.0.*,lm_head.*' "
            "or head specs like 'transformer.h.0.attn:head=1'"
        )
    return values


def _opt(default: Any, help: str, **cli: Any) -> Any:
    """A flag's dataclass field: its default, help and command-line options."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class RunArguments:
    """Flags of every command."""

    mixed_precision: str | None = _opt(
        None,
        "autocast of the forward/backward (sampling state stays fp32); fp16 is run in fp32 "
        "with a logged notice (default: accelerate's setting, ACCELERATE_MIXED_PRECISION)",
        choices=("no", "bf16", "fp16"),
    )
    quiet: bool = _opt(False, "no progress bars", aliases=("--no-progress",))
    log_level: str | None = _opt(
        None,
        "level of hf_llc's log records (default: $HF_LLC_VERBOSITY, else warning)",
        choices=LOG_LEVELS,
    )
    debug: bool = _opt(False, "on an error, show the Python traceback instead of one line")


@dataclass
class DataArguments:
    """How ``estimate`` and ``calibrate`` load MODEL and its data."""

    dataset: str | None = _opt(
        None,
        "Hub dataset name, a save_to_disk folder, or a json/jsonl/csv/parquet/txt file (required)",
        metavar="DATA",
        required=True,
        aliases=("--dataset-name", "--dataset_name"),
    )
    dataset_config: str | None = _opt(
        None, "Hub dataset config name", aliases=("--dataset-config-name", "--dataset_config_name")
    )
    split: str = _opt("train", "Hub dataset or save_to_disk split")
    dataset_revision: str | None = _opt(None, "Hub revision (branch, tag or commit) of --dataset")
    text_column: str | None = _opt(None, "raw text column to tokenize (default: auto-detected)")
    max_length: int | None = _opt(None, "truncate tokenized texts to this many tokens")
    num_samples: int | None = _opt(
        None, "use only the first N rows that have a target token (default: all)"
    )
    block_size: int | None = _opt(
        None,
        "causal LMs: concatenate the tokenized texts and cut them into blocks of N tokens, "
        "each one sample (as transformers' run_clm does; default: one sample per row)",
    )
    keep_empty_rows: bool = _opt(
        False,
        "count rows without a target token (empty texts) in n; by default they are dropped "
        "and the count is reported",
    )
    task: str | None = _opt(
        None,
        "model head when config.architectures is unset: causal-lm, or a Hub pipeline tag "
        "(text-generation, fill-mask, …) or peft task type (CAUSAL_LM, …)",
    )
    revision: str | None = _opt(None, "Hub revision (branch, tag or commit) of MODEL")
    base_model: str | None = _opt(
        None,
        "MODEL a PEFT adapter folder: load it on this base model (Hub id or folder) instead of "
        "the one its adapter_config.json names",
        metavar="MODEL",
    )
    trust_remote_code: bool = _opt(False, "allow MODEL's custom modelling code to run")
    allow_pickle: bool = _opt(False, "allow .bin (pickle) weights")
    allow_missing_weights: bool = _opt(
        False, "allow a checkpoint that does not cover every weight of the model class"
    )
    parameters: list[str] | None = _opt(
        None,
        "sample only the parameters whose names match these globs (comma-separated, e.g. "
        "'transformer.h.0.*'; a weight-refined LLC; the rest stay at w*), or attention heads "
        "as MODULE:head=I (e.g. 'transformer.h.0.attn:head=1', several: 'MODULE:head=0+2'; only "
        "that head's slices of the attention projections, output bias excluded) (default: "
        "every trainable parameter)",
        parse=_globs,
        metavar="PATTERNS",
    )
    loss_fn: str | None = _opt(
        None, "loss_fn(outputs, batch) of your own", metavar="MODULE:FUNCTION"
    )
    model_loss_fn: str | None = _opt(
        None, "model_loss_fn(model, batch) of your own", metavar="MODULE:FUNCTION"
    )


@dataclass
class CardArguments:
    """Where an LLC is recorded in MODEL's model card."""

    write_card: bool = _opt(False, "record the LLC in MODEL's card (README.md)")
    card_model_name: str | None = _opt(
        None,
        "the model-index model to record in (needed when the card lists several)",
        metavar="NAME",
    )


@dataclass
class HubArguments:
    """Recording the LLC on the Hub: a pull request on the model repository's card."""

    push_to_hub: str | None = _opt(
        None,
        "open a pull request on this Hub model repository whose README.md gains the LLC "
        "(needs a token with write access)",
        metavar="REPO_ID",
    )
    no_pr: bool = _opt(
        False, "with --push-to-hub: commit to the branch directly instead of opening a PR"
    )
    hub_revision: str | None = _opt(
        None, "with --push-to-hub: the branch to update (default: the repository's default)"
    )
    hub_token: str | None = _opt(
        None, "Hub token for --push-to-hub (default: HF_TOKEN or the saved login)"
    )
    commit_message: str | None = _opt(None, "with --push-to-hub: the commit message")


@dataclass
class EstimateArguments:
    """The outputs of ``estimate`` and its checkpoints."""

    output: Path | None = _opt(None, "write the result as JSON here")
    plot: Path | None = _opt(None, "save the trace plot (PNG) here")
    output_dir: Path | None = _opt(
        None,
        "save every chain's state here periodically, with result.json and a manifest; "
        "Ctrl-C or SIGTERM saves and stops (exit 130 / 143)",
        metavar="DIR",
    )
    resume: bool = _opt(False, "continue the run in --output-dir to the uninterrupted result")
    checkpoint_every: int | None = _opt(
        None, "with --output-dir: also checkpoint every N steps", metavar="N"
    )
    checkpoint_seconds: float = _opt(
        300.0,
        "with --output-dir: checkpoint a running chain at least every S seconds",
        metavar="S",
    )


@dataclass
class CalibrateArguments:
    """The sweep of ``calibrate``."""

    grid: list[float] | None = _opt(
        None,
        "step sizes to try, e.g. 1e-5,3e-5,1e-4 (default: ε_c·2^k, k = -3..0, at and below "
        "the curvature step ε_c)",
        parse=_floats,
    )
    min_acceptance: float = _opt(0.9, "smallest MALA acceptance of a chosen ε")
    pilot_burnin: int | None = _opt(None, "burn-in of each pilot chain (default: --num-burnin)")
    pilot_draws: int | None = _opt(None, "draws of each pilot chain (default: min(draws, 200))")
    output: Path | None = _opt(None, "write the sweep and the choice as JSON here")
    plot: Path | None = _opt(None, "save λ̂ and acceptance against ε (PNG) here")


@dataclass
class TrajectoryArguments:
    """The checkpoints and outputs of ``trajectory``."""

    revisions: list[str] | None = _opt(
        None,
        "MODEL a Hub repository: these revisions, in order (e.g. step1000,step2000; the step "
        "is the last number of each name)",
        parse=_globs,
        metavar="REVS",
    )
    checkpoints: list[str] | None = _opt(
        None,
        "these checkpoint folders, in order, instead of MODEL's checkpoint-* folders",
        parse=_globs,
        metavar="DIRS",
    )
    output: Path | None = _opt(
        None,
        "the curve's JSON, written after each checkpoint; rerunning skips the checkpoints it "
        "holds (default: MODEL/llc_trajectory.json for a local folder)",
    )
    plot: Path | None = _opt(None, "save λ̂ ± 2 s.e. against the step (PNG) here")
    write_card: bool = _opt(False, "also record each estimate in its checkpoint's card")


@dataclass
class ValidateArguments:
    """The cases of ``validate``: deep linear networks, or the nonlinear suite."""

    # hf_llc.validation.SUITES' names (not imported here: it loads the estimator's stack).
    suite: str = _opt(
        "quick",
        "the built-in suite to run (nonlinear: small MLPs and attention against the exact "
        "reference sampler instead of DLN theory; nonlinear-heldout: five more such problems, "
        "kept out of the recipe comparisons)",
        choices=("quick", "paper", "heldout", "nonlinear", "nonlinear-heldout"),
    )
    widths: list[int] | None = _opt(
        None, "one case instead: widths like 7,4,6,5 (input, hidden…, output)", parse=_ints
    )
    rank: int | None = _opt(None, "true rank (origin: 0; default: the smallest width)")
    construction: str | None = _opt(
        None,
        "where w* sits (default: full_rank, or aligned when --rank < min width)",
        choices=("origin", "aligned", "full_rank"),
    )
    num_samples: int = _opt(100_000, "n, the teacher's sample size")
    teacher_seed: int = _opt(0, "seed of the teacher problem (--seed seeds the chains)")
    rescale: int | None = _opt(
        None,
        "move each teacher along its rescaling symmetries (per-layer and per-unit factors in "
        "[0.1, 10], drawn from SEED): the same function and λ, a test of invariance",
        metavar="SEED",
    )
    input_distribution: str = _opt("normal", "the teacher's inputs", choices=("normal", "uniform"))
    loss_type: str = _opt(
        "gaussian_nll",
        "DLN loss: ½·squared error summed over outputs, or averaged (mse)",
        choices=("gaussian_nll", "mse"),
    )
    reference_warmup: int = _opt(1000, "--suite nonlinear: reference MALA warm-up steps per chain")
    reference_draws: int = _opt(4000, "--suite nonlinear: reference MALA draws per chain")
    reference_method: str = _opt(
        "mala",
        "--suite nonlinear: the reference sampler, MALA or HMC (up to 16 leapfrog steps a draw)",
        choices=("mala", "hmc"),
    )
    reference_temperatures: int = _opt(
        1,
        "--suite nonlinear: replicas per reference chain, replica exchange down to "
        "--reference-min-temperature (1: none); for targets with several modes, whose "
        "reference chains disagree (R-hat)",
    )
    reference_min_temperature: float = _opt(
        0.02, "--suite nonlinear: the hottest replica's temperature, in (0, 1)"
    )
    reference_ladder: str = _opt(
        "geometric",
        "--suite nonlinear: where the replicas' temperatures sit: evenly in log t, or "
        "'adaptive' (re-placed in the warm-up so that every neighbouring pair swaps about as "
        "often)",
        choices=("geometric", "adaptive"),
    )
    reference_chains: int | None = _opt(
        None,
        "--suite nonlinear: reference chains (default: two per SGLD chain, each in that "
        "chain's localizer metric)",
    )
    cases: list[str] | None = _opt(
        None,
        "--suite nonlinear…: run only these of the suite's cases (comma-separated names)",
        parse=_names,
        metavar="NAMES",
    )
    jobs: int | None = _opt(None, "worker processes (default: the cores)")
    output: Path | None = _opt(
        None, "write the results as JSON here (rewritten after each finished case)"
    )
    resume: bool = _opt(
        False,
        "keep the cases already in --output (a run that was stopped, or other --cases of the "
        "same recipe) and run only the others",
    )


#: The dataclasses behind each command's flags, in ``--help`` order, with their group titles.
COMMAND_ARGUMENTS: dict[str, tuple[tuple[type, str], ...]] = {
    "validate": (
        (ValidateArguments, "cases"),
        (SamplerConfig, "sampler"),
        (RunArguments, "run"),
    ),
    "estimate": (
        (DataArguments, "model and data"),
        (EstimateArguments, "outputs and checkpoints"),
        (CardArguments, "model card"),
        (HubArguments, "Hub"),
        (SamplerConfig, "sampler"),
        (RunArguments, "run"),
    ),
    "trajectory": (
        (DataArguments, "model and data (the same for every checkpoint)"),
        (TrajectoryArguments, "checkpoints and outputs"),
        (SamplerConfig, "sampler"),
        (RunArguments, "run"),
    ),
    "calibrate": (
        (DataArguments, "model and data"),
        (CalibrateArguments, "sweep"),
        (CardArguments, "model card (estimate at the chosen ε and record both)"),
        (HubArguments, "Hub (estimate at the chosen ε and record both)"),
        (SamplerConfig, "sampler (the real chains' settings; --step-size is ignored)"),
        (RunArguments, "run"),
    ),
}


def _value_type(hint: Any) -> type | None:
    """``bool``, ``int``, ``float``, ``Path`` or ``str``: a field's value type, if simple."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if union else (hint,)
    return next((k for k in (bool, int, float, Path, str) if k in options), None)


def _flag_names(f: Field) -> list[str]:
    return ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]


def _default(f: Field) -> Any:
    return None if f.default is MISSING else f.default


def _help(f: Field) -> str:
    text = f.metadata.get("help", "")
    default = _default(f)
    if default is None or default is False or "(default" in text or "(required" in text:
        return text
    return f"{text} (default: {default})"


def _flag_parser(parse: Any, name: str) -> Any:
    """``parse`` whose ``ValueError`` ("name takes …") names the flag (``--name takes …``)."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as err:
            message = str(err)
            if message.startswith(name + " "):
                message = "--" + name.replace("_", "-") + message[len(name) :]
            raise argparse.ArgumentTypeError(message) from err

    return parse_flag


def _add_fields(group: argparse._ArgumentGroup, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        options: dict[str, Any] = {"dest": f.name, "default": None, "help": _help(f)}
        kind = _value_type(hints[f.name])
        if kind is bool:
            options["action"] = "store_true"
        else:
            if "choices" in f.metadata:
                options["choices"] = f.metadata["choices"]
            elif "parse" in f.metadata:
                options["type"] = _flag_parser(f.metadata["parse"], f.name)
                if "metavar" in f.metadata:
                    options["metavar"] = f.metadata["metavar"]
            else:
                options["type"] = kind or str
                metavar = {int: "N", float: "X", Path: "PATH", str: "TEXT"}.get(kind)
                options["metavar"] = f.metadata.get("metavar", metavar)
        group.add_argument(*_flag_names(f), **options)
        if "_" in f.name:  # the spelling of HfArgumentParser and accelerate, not in --help
            group.add_argument("--" + f.name, **{**options, "help": argparse.SUPPRESS})


_MODEL_HELP = (
    "Hub id, local checkpoint folder, or PEFT adapter folder (only the adapter's weights are "
    "sampled) (required; or `model:` in --config)"
)


def _add_command(
    sub: argparse._SubParsersAction, name: str, model_help: str = _MODEL_HELP, **kwargs
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    if name != "validate":
        parser.add_argument("model", metavar="MODEL", nargs="?", help=model_help)
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML or JSON file of this command's settings (flag names, - or _); flags given "
        "on the command line override it",
    )
    for cls, title in COMMAND_ARGUMENTS[name]:
        group = parser.add_argument_group(title)
        if cls is SamplerConfig:
            group.add_argument(
                "--preset",
                choices=sorted(PRESETS),
                help="start from a named recipe (language-model: see docs/language_models.md); "
                "the sampler flags and --config override its settings",
            )
        _add_fields(group, cls)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-llc`` parser: the ``validate``, ``estimate`` and ``calibrate`` commands."""
    parser = argparse.ArgumentParser(
        prog="hf-llc",
        description="Local Learning Coefficient estimation for Hugging Face models.",
        epilog="Every --flag-name is also accepted as --flag_name. Each command takes "
        "--config FILE (YAML or JSON) for any of its flags.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_command(
        sub,
        "validate",
        help="check λ̂ against exact deep-linear-network theory",
        description=(
            "Without --widths, run a built-in suite of deep linear network cases and compare "
            "λ̂ with Aoyagi's exact λ; with --widths/--rank/--construction, run that one case."
        ),
    )
    _add_command(
        sub,
        "estimate",
        help="estimate the LLC of a checkpoint (Hub id or local folder) on a dataset",
        description="Estimate the LLC of MODEL at its weights on DATA and print a summary.\n\n"
        "With --output-dir, every chain's state is saved there periodically; Ctrl-C or SIGTERM "
        "saves and stops (exit code 130 / 143),\nand the same command with --resume continues "
        "to exactly the result of an uninterrupted run.",
    )
    _add_command(
        sub,
        "trajectory",
        model_help="a training run's output folder (its checkpoint-* folders), or a Hub id "
        "with --revisions (required; or `model:` in --config)",
        help="estimate the LLC of every checkpoint of a training run with one recipe",
        description="Estimate the LLC of every checkpoint-N folder of MODEL (a Trainer's "
        "output_dir), or of MODEL at each of --revisions,\nwith the same sampler settings and "
        "data; the curve is written to --output after each checkpoint, and a rerun skips\n"
        "the checkpoints already there.",
    )
    _add_command(
        sub,
        "calibrate",
        help="choose the SGLD step size for a checkpoint with short pilot chains",
        description=(
            "Run short pilot chains of MODEL on DATA over a grid of step sizes ε, print the "
            "sweep (pilot λ̂, MALA acceptance, flatness)\nand the chosen ε: the largest one "
            "that is stable, flat and has MALA acceptance ≥ --min-acceptance."
        ),
    )
    return parser


def _read_config(path: Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON settings file."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ValueError(f"--config {path}: cannot read it ({err}).") from err
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # json and yaml syntax errors
        raise ValueError(f"--config {path}: not valid YAML/JSON ({err}).") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"--config {path}: expected a mapping of settings, got a {type(data).__name__}."
        )
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _config_value(path: Path, action: argparse.Action, value: Any) -> Any:
    """A value from the settings file, parsed and checked as the flag's would be."""
    name = action.option_strings[0] if action.option_strings else action.dest
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ValueError(
                f"--config {path}: {action.dest} must be true or false, got {value!r}."
            )
        return value
    if isinstance(value, str) and action.type is not None:
        try:
            value = action.type(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as err:
            raise ValueError(f"--config {path}: {action.dest}: {err}") from err
    elif isinstance(value, list) and action.type is not None:
        value = action.type(",".join(map(str, value)))
    elif action.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif action.type is Path and isinstance(value, str):
        value = Path(value)
    if action.choices is not None and value not in action.choices:
        raise ValueError(
            f"--config {path}: {action.dest}={value!r} is not one of {list(action.choices)} "
            f"({name})."
        )
    return value


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; merge ``--config``; fill in the defaults.

    ``args.given`` is the set of settings given on the command line or in the file (a
    setting not given holds its default).
    """
    args = parser.parse_args(argv)
    command = _subparser(parser, args.command)
    actions = {a.dest: a for a in command._actions if a.dest not in ("help", "config")}
    given = {dest for dest in actions if getattr(args, dest) is not None}
    if args.config is not None:
        try:
            settings = _read_config(args.config)
        except ValueError as err:
            command.error(str(err))
        unknown = sorted(set(settings) - set(actions))
        if unknown:
            command.error(
                f"--config {args.config}: unknown setting(s) {', '.join(unknown)} for "
                f"`hf-llc {args.command}` (see hf-llc {args.command} --help)."
            )
        for dest, value in settings.items():
            if dest in given:
                continue  # the command line wins
            try:
                setattr(args, dest, _config_value(args.config, actions[dest], value))
            except ValueError as err:
                command.error(str(err))
            given.add(dest)
    if getattr(args, "preset", None) is not None:
        for name, value in preset_settings(args.preset).items():
            if name not in given:  # the command line and --config win over the preset
                setattr(args, name, value)
                given.add(name)
    for cls, _ in COMMAND_ARGUMENTS[args.command]:
        for f in fields(cls):
            if f.name not in given:
                setattr(args, f.name, _default(f))
            if f.metadata.get("required") and getattr(args, f.name) is None:
                command.error(f"--{f.name.replace('_', '-')} is required (or set it in --config)")
    if "model" in actions and args.model is None:
        command.error("MODEL is required: a Hub id or local checkpoint folder")
    args.given = given
    return args


def config_from_args(args: argparse.Namespace) -> SamplerConfig:
    """The :class:`SamplerConfig` of the sampler flags (a flag not given holds its default)."""
    return SamplerConfig(**{f.name: getattr(args, f.name) for f in fields(SamplerConfig)})

"""``hf-llc`` command line: ``estimate`` the LLC of a checkpoint, ``calibrate`` its step size,
``validate`` the estimator against exact theory.

Also runnable as ``python -m hf_llc``.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from dataclasses import replace
from pathlib import Path

from .sampling import SamplerConfig
from .sampling.config import CHAIN_MODES, PRECONDITIONERS


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


def _step_size(text: str):
    if text in ("curvature", "auto"):
        return text
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--step-size takes a positive number, 'curvature' or 'auto', got {text!r}"
        ) from err


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that override :class:`SamplerConfig` fields (defaults: the config's defaults)."""
    g = parser.add_argument_group("sampler (defaults: SamplerConfig defaults)")
    g.add_argument(
        "--step-size",
        type=_step_size,
        help="ε, 'curvature' (default) or 'auto' (pilot chains choose ε; see hf-llc calibrate)",
    )
    g.add_argument("--step-scale", type=float, help="c in ε = c / λ_max (curvature step size)")
    g.add_argument("--localization", type=float, help="γ")
    g.add_argument("--nbeta", type=float, help="nβ (default n / log n)")
    g.add_argument("--num-chains", type=int)
    g.add_argument("--num-draws", type=int)
    g.add_argument("--num-burnin", type=int)
    g.add_argument("--draw-every", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--preconditioner", choices=PRECONDITIONERS)
    g.add_argument("--sampler-seed", type=int, help="seed of the chains (default 0)")
    g.add_argument("--mala", action="store_true", help="record MALA acceptance (diagnostic)")
    g.add_argument(
        "--chain-mode",
        choices=CHAIN_MODES,
        help="run a process's chains one after another (default 'sequential'), batched under "
        "torch.func.vmap, or 'auto' (batched when possible)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the loss and gradient")
    g.add_argument(
        "--mixed-precision",
        choices=["no", "bf16", "fp16"],
        default=None,
        help="autocast for forward/backward (default: accelerate's setting; fp16 is refused)",
    )


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


def config_from_args(args: argparse.Namespace) -> SamplerConfig:
    fields = {
        "step_size": args.step_size,
        "step_scale": args.step_scale,
        "localization": args.localization,
        "nbeta": args.nbeta,
        "num_chains": args.num_chains,
        "num_draws": args.num_draws,
        "num_burnin": args.num_burnin,
        "draw_every": args.draw_every,
        "batch_size": args.batch_size,
        "preconditioner": args.preconditioner,
        "seed": args.sampler_seed,
        "mala": args.mala or None,
        "chain_mode": args.chain_mode,
        "compile": args.compile or None,
    }
    return SamplerConfig(**{k: v for k, v in fields.items() if v is not None})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-llc", description="Local Learning Coefficient estimation for Hugging Face models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser(
        "validate",
        help="check λ̂ against exact deep-linear-network theory",
        description=(
            "Without --widths, run a built-in suite of deep linear network cases and compare "
            "λ̂ with Aoyagi's exact λ; with --widths/--rank/--construction, run that one case."
        ),
    )
    v.add_argument("--suite", choices=["quick", "paper"], default="quick")
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

    e = sub.add_parser(
        "estimate",
        help="estimate the LLC of a checkpoint (Hub id or local folder) on a dataset",
        description="Estimate the LLC of MODEL at its weights on DATA and print a summary.",
    )
    add_checkpoint_arguments(e)
    e.add_argument("--output", type=Path, help="write the result as JSON here")
    e.add_argument("--write-card", action="store_true", help="record the LLC in MODEL's card")
    e.add_argument(
        "--card-model-name",
        metavar="NAME",
        help="with --write-card: the model-index model to record in (needed when the card "
        "lists several)",
    )
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
    c.add_argument(
        "--write-card",
        action="store_true",
        help="then estimate the LLC at the chosen ε and record it (with the sweep's choice) in "
        "MODEL's card",
    )
    c.add_argument(
        "--card-model-name",
        metavar="NAME",
        help="with --write-card: the model-index model to record in (needed when the card "
        "lists several)",
    )
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampler_arguments(c)
    for command in (v, e, c):
        command.add_argument(
            "--debug",
            action="store_true",
            help="on an error, show the Python traceback instead of one error: line",
        )
    return parser


def _validate(args: argparse.Namespace) -> int:
    from .validation import DEFAULT_NUM_SAMPLES, SUITES, ValidationCase, format_table, run_suite

    cfg = config_from_args(args)
    n = args.num_samples if args.num_samples is not None else DEFAULT_NUM_SAMPLES
    if n < 2:
        raise ValueError(f"--num-samples must be ≥ 2, got {n}.")
    if args.widths is not None:
        construction = args.construction
        if construction is None:
            low = args.rank is not None and args.rank < min(args.widths)
            construction = "aligned" if low else "full_rank"
        rank = args.rank
        if rank is None:
            rank = 0 if construction == "origin" else min(args.widths)
        from .models.dln import dln_truth

        dln_truth(args.widths, rank, construction)  # clear error before any work
        cases = [ValidationCase(tuple(args.widths), rank, construction)]
    else:
        if args.rank is not None or args.construction is not None:
            raise ValueError("--rank/--construction need --widths (or drop them to run a suite).")
        cases = list(SUITES[args.suite])
    if args.output is not None:
        _check_writable(args.output)

    done = []
    distributed = _world_size() > 1
    main_process = _is_main_process()
    if distributed:
        # Under accelerate launch / torchrun every process runs every case, with the chains of
        # each case split over the processes; only the main process prints and writes.
        args.jobs = 1

    def report(r: dict) -> None:
        done.append(r)
        if not args.no_progress and main_process:
            print(
                f"[{len(done)}/{len(cases)}] {','.join(map(str, r['widths']))} "
                f"{r['construction']} r={r['rank']}: λ̂ = {r['llc_mean']:.4g} "
                f"(λ = {r['lambda_theory']:g}, {r['relative_error']:+.1%}) {r['seconds']:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    out = run_suite(
        cases,
        cfg,
        num_samples=n,
        seed=args.seed,
        input_distribution=args.input_distribution,
        loss_type=args.loss_type,
        mixed_precision=args.mixed_precision,
        rescale=args.rescale,
        jobs=args.jobs,
        on_result=report,
    )
    if not main_process:
        return 0
    print(format_table(out["cases"]))
    s = out["summary"]
    print(
        f"\n{s['num_cases']} cases, n = {n}: median |rel. err| = "
        f"{s['median_abs_relative_error']:.1%}, max = {s['max_abs_relative_error']:.1%}, "
        f"verdicts: {', '.join(f'{k} {v}' for k, v in s['verdicts'].items()) or '-'}, "
        f"{s['wall_seconds']:.0f}s"
    )
    if args.output is not None:
        from .serialization import write_json

        write_json(args.output, out)
        print(f"wrote {args.output}")
    return 0


def _import_function(spec: str, flag: str):
    import importlib
    import importlib.util
    import os

    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(
            f"{flag} takes MODULE:FUNCTION or path/to/file.py:FUNCTION (e.g. mylosses:pair_loss), "
            f"got {spec!r}."
        )
    try:
        if module_name.endswith(".py"):
            file_spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if file_spec is None or not Path(module_name).is_file():
                raise ImportError(f"no such file {module_name}")
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:  # console scripts do not put the cwd on sys.path
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as err:  # missing, or not valid Python
        raise ValueError(f"{flag}: cannot import {module_name!r} ({err}).") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{flag}: {module_name!r} has no function {attr!r}.")
    return fn


def load_data(name: str, *, config: str | None = None, split: str = "train"):
    """A ``datasets.Dataset`` from a Hub name, a ``save_to_disk`` folder or a local file."""
    import datasets

    path = Path(name)
    suffix = path.suffix.lower()
    builders = {
        ".json": "json",
        ".jsonl": "json",
        ".csv": "csv",
        ".parquet": "parquet",
        ".txt": "text",
    }
    if suffix in builders and not path.exists():
        raise ValueError(f"--dataset {name}: no such file; check the path.")
    if path.is_file():
        if suffix not in builders:
            raise ValueError(
                f"--dataset {name}: unknown file type {suffix!r}; use one of {sorted(builders)}."
            )
        if path.stat().st_size == 0:
            raise ValueError(f"--dataset {name} is an empty file; the LLC needs data rows.")
        try:
            return datasets.load_dataset(builders[suffix], data_files=str(path), split="train")
        except Exception as err:  # malformed json/csv/parquet: arrow and datasets errors
            raise ValueError(
                f"--dataset {name}: could not read it as {builders[suffix]} "
                f"({type(err).__name__}: {err}); check the file's format."
            ) from err
    if path.is_dir() and (
        (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
    ):
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as err:  # a damaged save_to_disk folder: arrow and json errors
            raise ValueError(
                f"--dataset {name}: could not read the save_to_disk folder "
                f"({type(err).__name__}: {err}); save it again with dataset.save_to_disk."
            ) from err
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"--split {split!r} not in {name} (splits: {list(loaded)}).")
            return loaded[split]
        return loaded
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as err:  # datasets raises many types for "not found"/offline
        from huggingface_hub import is_offline_mode

        offline = (
            " HF_HUB_OFFLINE is set: download the dataset first, or unset HF_HUB_OFFLINE."
            if is_offline_mode()
            else ""
        )
        raise ValueError(
            f"--dataset {name!r} could not be loaded ({type(err).__name__}: {err}). Pass a Hub "
            "dataset name (online or cached), a save_to_disk folder, or a data file." + offline
        ) from err


def _resume_command(args: argparse.Namespace) -> str:
    """The command line that continues this run: the same arguments plus ``--resume``."""
    argv = list(getattr(args, "argv", None) or sys.argv[1:])
    if "--resume" not in argv:
        argv.append("--resume")
    script = Path(sys.argv[0])
    module = script.name == "__main__.py" and script.parent.name == "hf_llc"
    prog = "python -m hf_llc" if module else "hf-llc"
    return f"{prog} {shlex.join(argv)}"


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse flags that would do nothing (so they are never recorded as if used)."""
    if getattr(args, "output_dir", None) is None:
        for flag in ("checkpoint_every", "checkpoint_seconds"):
            if getattr(args, flag, None) is not None:
                name = "--" + flag.replace("_", "-")
                raise ValueError(
                    f"{name} does nothing without --output-dir (the folder checkpoints are "
                    f"written to): add --output-dir DIR, or drop {name}."
                )
    if getattr(args, "checkpoint_seconds", None) is None:
        args.checkpoint_seconds = 300.0  # the documented default
    if Path(args.dataset).is_file():
        for flag, value in (("--split", args.split), ("--dataset-config", args.dataset_config)):
            if value is not None:
                raise ValueError(
                    f"{flag} {value!r} does nothing with the local data file --dataset "
                    f"{args.dataset} (it has one split and no configs): drop {flag}."
                )
    if args.dataset_config is not None and Path(args.dataset).is_dir():
        raise ValueError(
            f"--dataset-config {args.dataset_config!r} does nothing with the save_to_disk "
            f"folder --dataset {args.dataset}: drop --dataset-config."
        )
    if args.card_model_name is not None and not args.write_card:
        raise ValueError("--card-model-name does nothing without --write-card: add it or drop it.")
    if args.split is None:
        args.split = "train"


def _check_outputs(args: argparse.Namespace) -> None:
    """Everything about the flags and outputs that can be checked before loading or sampling:
    flags that would do nothing, --output (folder, not a directory or read-only file), --plot
    (also its suffix), --write-card (a local folder with a writable, well-formed card)."""
    _check_flags(args)
    if args.output is not None:
        _check_writable(args.output)
    if args.plot is not None:
        from .plotting import check_plot_path

        check_plot_path(args.plot, "--plot")
    if args.write_card and not Path(args.model).is_dir():
        raise ValueError(
            "--write-card writes README.md in a local checkpoint folder; download the model "
            "(e.g. huggingface-cli download) and pass its folder."
        )
    if args.write_card:
        from .modelcard import check_model_card

        # A malformed, read-only or ambiguous card fails now, not after sampling.
        check_model_card(args.model, model_name=args.card_model_name, what="--write-card")


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def load_tokenizer(model: str, revision: str | None, trust_remote_code: bool):
    """The checkpoint's tokenizer, or ``None`` when it has none (raw text then gives a clear
    error). A local folder whose tokenizer files fail to load is an error naming them."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            model, revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as err:  # OSError when absent; anything from a corrupt file
        files = [f for f in TOKENIZER_FILES if (Path(model) / f).is_file()]
        if not files:
            return None  # not every checkpoint has one
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise ValueError(
            f"the tokenizer in {model} ({', '.join(files)}) could not be loaded ({detail}); "
            "fix or re-save it (tokenizer.save_pretrained), or remove the tokenizer files if "
            "the dataset is already tokenized (input_ids)."
        ) from err


def load_inputs(args: argparse.Namespace) -> tuple:
    """(model, data, estimate_llc keyword arguments) from the checkpoint flags."""
    from .loading import load_checkpoint

    loss_fn = _import_function(args.loss_fn, "--loss-fn") if args.loss_fn else None
    model_loss_fn = (
        _import_function(args.model_loss_fn, "--model-loss-fn") if args.model_loss_fn else None
    )
    model = load_checkpoint(
        args.model,
        task=args.task,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        allow_missing_weights=args.allow_missing_weights,
    )
    tokenizer = load_tokenizer(args.model, args.revision, args.trust_remote_code)
    data = load_data(args.dataset, config=args.dataset_config, split=args.split)
    kwargs = dict(
        loss_fn=loss_fn,
        model_loss_fn=model_loss_fn,
        tokenizer=tokenizer,
        text_column=args.text_column,
        max_length=args.max_length,
        num_samples=args.num_samples,
        mixed_precision=args.mixed_precision,
        progress=not args.quiet,
    )
    return model, data, kwargs


def _estimate(args: argparse.Namespace) -> int:
    from .checkpoint import PARTIAL_RESULT, EstimateInterrupted
    from .estimator import estimate_llc

    cfg = config_from_args(args)
    _check_outputs(args)
    model, data, kwargs = load_inputs(args)
    try:
        result = estimate_llc(
            model,
            data,
            cfg,
            output_dir=args.output_dir,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            checkpoint_seconds=args.checkpoint_seconds,
            **kwargs,
        )
    except EstimateInterrupted as stop:
        if _is_main_process():
            name = signal.Signals(stop.signum).name
            partial = (
                f"; partial result in {stop.output_dir / PARTIAL_RESULT}"
                if stop.partial_result is not None
                else ""
            )
            print(
                f"hf-llc estimate: {name}: saved the run in {stop.output_dir} "
                f"({len(stop.finished_chains)} of {cfg.num_chains} chains finished{partial}).",
                file=sys.stderr,
            )
            print(f"To resume, run: {_resume_command(args)}", file=sys.stderr, flush=True)
        return stop.exit_code
    return _report_estimate(args, cfg, result, data)


def _num(value) -> float:
    """A statistic from the diagnostics as a float (NaN when missing)."""
    return float("nan") if value is None else float(value)


def _report_estimate(args: argparse.Namespace, cfg: SamplerConfig, result, data) -> int:
    """Print an estimate's summary and write its JSON, plot and card as the flags ask."""
    from .serialization import write_json

    if not _is_main_process():
        return 0
    diag = result.diagnostics
    if cfg.step_size == "auto" and "calibration" in diag:
        from .calibration import CalibrationResult

        print(CalibrationResult.from_dict(diag["calibration"]).table())
    print(result.summary())
    print(
        f"chains × draws: {cfg.num_chains} × {cfg.num_draws} (burn-in {cfg.num_burnin}), "
        f"L_n(w*) = {result.init_loss:.6g}, "
        f"R-hat (rank) = {_num(diag.get('rhat_rank')):.3f}, "
        f"ESS bulk/tail = {_num(diag.get('ess_bulk')):.0f}/{_num(diag.get('ess_tail')):.0f}, "
        f"divergences: {len(diag['divergences'])}, "
        f"sampling {result.timings['sampling_seconds']:.1f}s"
    )
    print(result.chain_table())
    # The JSON first: a plot or card that fails then never loses the estimate.
    if args.output is not None:
        out = result.to_dict()
        out["model"] = {"name_or_path": args.model, "revision": args.revision}
        out["dataset"] = {
            "name": args.dataset,
            "config": args.dataset_config,
            "split": args.split,
            "fingerprint": getattr(data, "_fingerprint", None),
        }
        write_json(args.output, out)
        print(f"wrote {args.output}")
    if args.plot is not None:
        result.plot(args.plot)
        print(f"wrote {args.plot}")
    if args.write_card:
        from .modelcard import write_llc_to_model_card

        card = write_llc_to_model_card(
            args.model,
            result,
            dataset_name=args.dataset,
            dataset_split=args.split,
            dataset_config=args.dataset_config,
            dataset_fingerprint=getattr(data, "_fingerprint", None),
            model_revision=args.revision,
            model_name=args.card_model_name,
            plot_path=args.plot,
        )
        print(f"wrote the LLC into {card}")
    return 0


def _world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


def _check_writable(path: Path, flag: str = "--output") -> None:
    """See :func:`hf_llc.serialization.check_output_path` (folder, directories, special and
    read-only files, symbolic links)."""
    from .serialization import check_output_path

    check_output_path(path, flag)


def _calibrate(args: argparse.Namespace) -> int:
    from .calibration import DEFAULT_MIN_ACCEPTANCE, calibrate_step_size

    cfg = config_from_args(args)
    _check_outputs(args)
    model, data, kwargs = load_inputs(args)
    calibration = calibrate_step_size(
        model,
        data,
        cfg,
        grid=args.grid,
        min_acceptance=(
            args.min_acceptance if args.min_acceptance is not None else DEFAULT_MIN_ACCEPTANCE
        ),
        pilot_burnin=args.pilot_burnin,
        pilot_draws=args.pilot_draws,
        **kwargs,
    )
    main_process = _is_main_process()
    if main_process:
        print(calibration.table())
        if args.output is not None:  # the JSON first (see _report_estimate)
            from .serialization import write_json

            out = calibration.to_dict()
            out["model"] = {"name_or_path": args.model, "revision": args.revision}
            out["config"] = cfg.to_dict()
            write_json(args.output, out)
            print(f"wrote {args.output}")
        if args.plot is not None:
            calibration.plot(args.plot)
            print(f"wrote {args.plot}")
    if not args.write_card:
        return 0
    from .estimator import estimate_llc

    chosen = replace(cfg, step_size=calibration.chosen_step_size)
    result = estimate_llc(model, data, chosen, **kwargs)
    # The card records how ε was chosen next to the estimate made with it.
    result.diagnostics["calibration"] = calibration.to_dict()
    args.output = args.plot = None  # those were the sweep's
    return _report_estimate(args, chosen, result, data)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        if args.command == "validate":
            return _validate(args)
        if args.command == "estimate":
            return _estimate(args)
        if args.command == "calibrate":
            return _calibrate(args)
    except (ValueError, OSError) as err:
        if args.debug:
            raise
        message = " ".join(str(err).split())  # one line, even for wrapped library errors
        parser.exit(2, f"hf-llc {args.command}: error: {message}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())

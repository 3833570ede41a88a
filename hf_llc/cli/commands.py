"""The ``hf-llc`` commands (``validate``, ``estimate``, ``calibrate``) and :func:`main`,
which runs one and turns an error into one ``error:`` line and exit status 2."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from dataclasses import fields, replace
from pathlib import Path

from .._logging import set_verbosity
from ..sampling import SamplerConfig
from .arguments import ValidateArguments, build_parser, config_from_args, parse_args
from .inputs import load_inputs


def _suite_record(args: argparse.Namespace, recipe: dict, order, key, summarise, **kw):
    """The :class:`~hf_llc.validation.SuiteRecord` of a ``validate`` run: written to
    ``--output`` after each case; with ``--resume`` it first keeps the cases already there."""
    from ..validation import SuiteRecord

    if args.resume and args.output is None:
        raise ValueError("--resume continues the report in --output: add --output FILE.")
    if args.output is not None:
        _check_writable(args.output)
    record = SuiteRecord(args.output, recipe, order, key, summarise, **kw)
    if args.resume:
        kept = record.resume()
        if not args.quiet and record.write:
            print(f"kept {kept} finished case(s) from {args.output}", file=sys.stderr, flush=True)
    return record


def _nonlinear_cases(args: argparse.Namespace, suite) -> list:
    """The suite's cases, or the ones ``--cases`` names (in the suite's order)."""
    if args.cases is None:
        return list(suite)
    names = [c.name for c in suite]
    unknown = [n for n in args.cases if n not in names]
    if unknown:
        raise ValueError(
            f"--cases {','.join(unknown)}: not in --suite {args.suite}; its cases are "
            f"{', '.join(names)}."
        )
    return [c for c in suite if c.name in args.cases]


def _validate_nonlinear(args: argparse.Namespace) -> int:
    """``validate --suite nonlinear``: each case's SGLD λ̂ (the sampler flags' recipe) against
    the exact reference (same nβ and γ), as a Markdown table."""
    from ..validation_nonlinear import (
        NONLINEAR_SUITES,
        RESULT_NUMBERS,
        format_nonlinear_summary,
        format_nonlinear_table,
        run_nonlinear_suite,
        summarise_nonlinear,
    )

    given = getattr(args, "given", set())
    dln_only = ("widths", "rank", "construction", "rescale", "input_distribution", "loss_type")
    bad = [f"--{k.replace('_', '-')}" for k in dln_only if k in given]
    if bad:
        raise ValueError(
            f"{', '.join(bad)}: options of the DLN suites, not of --suite {args.suite}."
        )
    num_samples = args.num_samples if "num_samples" in given else None
    if num_samples is not None and num_samples < 2:
        raise ValueError(f"--num-samples must be ≥ 2, got {num_samples}.")
    cfg = config_from_args(args)
    suite = NONLINEAR_SUITES[args.suite]
    selected = _nonlinear_cases(args, suite)
    reference_kwargs = {
        "num_warmup": args.reference_warmup,
        "num_draws": args.reference_draws,
        "method": args.reference_method,
        "num_temperatures": args.reference_temperatures,
        "min_temperature": args.reference_min_temperature,
        # Only when not the default, so that files written before the option still resume.
        **({} if args.reference_ladder == "geometric" else {"ladder": args.reference_ladder}),
        **({} if args.reference_chains is None else {"num_chains": args.reference_chains}),
    }
    recipe = {
        "config": cfg.to_dict(),
        "teacher_seed": args.teacher_seed,
        "num_samples": num_samples,
        "reference": reference_kwargs,
    }
    record = _suite_record(
        args,
        recipe,
        [c.name for c in suite],
        lambda r: r["case"],
        lambda results, seconds: summarise_nonlinear(results, cfg, seconds),
        header={"suite": args.suite},
        numbers=RESULT_NUMBERS,
    )
    cases = record.pending(selected, lambda c: c.name)
    done = []

    def report(r: dict) -> None:
        record.add(r)
        done.append(r)
        if not args.quiet:
            print(
                f"[{len(done)}/{len(cases)}] {r['case']}: SGLD λ̂ = {r['llc_mean']:.4g}, "
                f"reference {r['reference_llc']:.4g} ± {r['reference_mcse']:.2g} "
                f"({r['relative_difference']:+.1%}) "
                f"{r['reference_seconds'] + r['sgld_seconds']:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    run_nonlinear_suite(
        cases,
        cfg,
        jobs=args.jobs,
        on_result=report,
        seed=args.teacher_seed,
        num_samples=num_samples,
        reference_kwargs=reference_kwargs,
    )
    out = record.save()
    print(format_nonlinear_table(out["cases"]))
    print("\n" + format_nonlinear_summary(out["summary"]))
    if args.output is not None:
        print(f"wrote {args.output}")
    return 0


def _dln_cases(args: argparse.Namespace) -> list:
    """The ``--widths`` case, or the ``--suite``'s cases (``--cases`` is nonlinear-only)."""
    from ..validation import SUITES, ValidationCase

    if args.cases is not None:
        raise ValueError(
            f"--cases names cases of --suite nonlinear and nonlinear-heldout; pick a DLN case "
            f"with --widths (and --rank, --construction) instead of --suite {args.suite}."
        )
    if args.widths is None:
        if args.rank is not None or args.construction is not None:
            raise ValueError("--rank/--construction need --widths (or drop them to run a suite).")
        return list(SUITES[args.suite])
    construction = args.construction
    if construction is None:
        low = args.rank is not None and args.rank < min(args.widths)
        construction = "aligned" if low else "full_rank"
    rank = args.rank
    if rank is None:
        rank = 0 if construction == "origin" else min(args.widths)
    from ..models.dln import dln_truth

    dln_truth(args.widths, rank, construction)  # clear error before any work
    return [ValidationCase(tuple(args.widths), rank, construction)]


def _validate(args: argparse.Namespace) -> int:
    if args.suite.startswith("nonlinear"):
        return _validate_nonlinear(args)
    from ..validation import (
        RESULT_NUMBERS,
        case_key,
        format_table,
        result_key,
        run_suite,
        summarise,
    )

    # The reference sampler's options (every --reference-* flag) belong to the nonlinear suites.
    ref_flags = [f.name for f in fields(ValidateArguments) if f.name.startswith("reference_")]
    bad = [f"--{k.replace('_', '-')}" for k in ref_flags if k in getattr(args, "given", ())]
    if bad:
        raise ValueError(f"{', '.join(bad)}: options of --suite nonlinear only.")
    cfg = config_from_args(args)
    n = args.num_samples
    if n < 2:
        raise ValueError(f"--num-samples must be ≥ 2, got {n}.")
    all_cases = _dln_cases(args)
    distributed = _world_size() > 1
    main_process = _is_main_process()
    if distributed:
        # Under accelerate launch / torchrun every process runs every case, with the chains of
        # each case split over the processes; only the main process prints and writes.
        args.jobs = 1
    problem = {
        "num_samples": n,
        "seed": args.teacher_seed,
        "input_distribution": args.input_distribution,
        "loss_type": args.loss_type,
        "mixed_precision": args.mixed_precision,
        "rescale": args.rescale,
    }
    record = _suite_record(
        args,
        {"config": cfg.to_dict(), **problem},
        [case_key(c) for c in all_cases],
        result_key,
        lambda results, seconds: summarise(results, cfg, seconds, n),
        write=main_process,
        numbers=RESULT_NUMBERS,
    )
    cases = record.pending(all_cases, case_key)
    done = []

    def report(r: dict) -> None:
        record.add(r)
        done.append(r)
        if not args.quiet and main_process:
            print(
                f"[{len(done)}/{len(cases)}] {','.join(map(str, r['widths']))} "
                f"{r['construction']} r={r['rank']}: λ̂ = {r['llc_mean']:.4g} "
                f"(λ = {r['lambda_theory']:g}, {r['relative_error']:+.1%}) {r['seconds']:.0f}s",
                file=sys.stderr,
                flush=True,
            )

    run_suite(cases, cfg, jobs=args.jobs, on_result=report, **problem)
    if not main_process:
        return 0
    out = record.save()
    print(format_table(out["cases"]))
    s = out["summary"]
    print(
        f"\n{s['num_cases']} cases, n = {n}: median |rel. err| = "
        f"{s['median_abs_relative_error']:.1%}, max = {s['max_abs_relative_error']:.1%}, "
        f"verdicts: {', '.join(f'{k} {v}' for k, v in s['verdicts'].items()) or '-'}, "
        f"{s['wall_seconds']:.0f}s"
    )
    if args.output is not None:
        print(f"wrote {args.output}")
    return 0


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
            if flag in args.given:
                name = "--" + flag.replace("_", "-")
                raise ValueError(
                    f"{name} does nothing without --output-dir (the folder checkpoints are "
                    f"written to): add --output-dir DIR, or drop {name}."
                )
    if Path(args.dataset).is_file():
        for flag, value in (("--split", args.split), ("--dataset-config", args.dataset_config)):
            if flag[2:].replace("-", "_") in args.given:
                raise ValueError(
                    f"{flag} {value!r} does nothing with the local data file --dataset "
                    f"{args.dataset} (it has one split and no configs): drop {flag}."
                )
    if args.dataset_revision is not None and Path(args.dataset).exists():
        raise ValueError(
            f"--dataset-revision {args.dataset_revision!r} does nothing with the local "
            f"--dataset {args.dataset} (revisions are the Hub's): drop --dataset-revision."
        )
    if getattr(args, "push_to_hub", None) is None:
        for flag in ("no_pr", "hub_revision", "hub_token", "commit_message"):
            if flag in args.given:
                name = "--" + flag.replace("_", "-")
                raise ValueError(
                    f"{name} does nothing without --push-to-hub REPO_ID: add it, or drop {name}."
                )
    if args.dataset_config is not None and Path(args.dataset).is_dir():
        raise ValueError(
            f"--dataset-config {args.dataset_config!r} does nothing with the save_to_disk "
            f"folder --dataset {args.dataset}: drop --dataset-config."
        )
    if args.loss_fn is not None and args.model_loss_fn is not None:
        raise ValueError(
            "--loss-fn and --model-loss-fn are alternatives (loss_fn(outputs, batch) or "
            "model_loss_fn(model, batch)): pass one of them."
        )
    if getattr(args, "card_model_name", None) is not None and not (
        args.write_card or args.push_to_hub
    ):
        raise ValueError(
            "--card-model-name does nothing without --write-card or --push-to-hub: add one "
            "or drop it."
        )


def _check_outputs(args: argparse.Namespace) -> None:
    """Everything about the flags and outputs that can be checked before loading or sampling:
    flags that would do nothing, --output (folder, not a directory or read-only file), --plot
    (also its suffix), --write-card (a local folder with a writable, well-formed card)."""
    _check_flags(args)
    if args.output is not None:
        _check_writable(args.output)
    if args.plot is not None:
        from ..plotting import check_plot_path

        check_plot_path(args.plot, "--plot")
    if args.write_card and not Path(args.model).is_dir():
        raise ValueError(
            f"--write-card writes README.md in a local checkpoint folder, and {args.model} is "
            f"not one: to record the LLC on the Hub, use --push-to-hub {args.model} (opens a "
            "pull request on its card); or download the model and pass its folder."
        )
    if args.write_card:
        from ..modelcard import check_model_card

        # A malformed, read-only or ambiguous card fails now, not after sampling.
        check_model_card(args.model, model_name=args.card_model_name, what="--write-card")
    if args.push_to_hub is not None:
        from ..modelcard import check_hub_model_card

        # An unreachable repository or an unreadable card fails now, not after sampling.
        check_hub_model_card(
            args.push_to_hub,
            revision=args.hub_revision,
            token=args.hub_token,
            model_name=args.card_model_name,
        )


def _estimate(args: argparse.Namespace) -> int:
    from ..checkpoint import PARTIAL_RESULT, EstimateInterrupted
    from ..estimator import estimate_llc

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


def _card_dataset(args: argparse.Namespace, data) -> dict:
    """The dataset a card records, from the data flags: the same for ``--write-card``,
    ``--push-to-hub`` and each checkpoint of ``trajectory``."""
    return dict(
        dataset_name=args.dataset,
        dataset_split=args.split,
        dataset_config=args.dataset_config,
        dataset_revision=args.dataset_revision,
        dataset_fingerprint=getattr(data, "_fingerprint", None),
    )


def _report_estimate(args: argparse.Namespace, cfg: SamplerConfig, result, data) -> int:
    """Print an estimate's summary and write its JSON, plot and card as the flags ask."""
    from ..serialization import write_json

    if not _is_main_process():
        return 0
    diag = result.diagnostics
    if cfg.step_size == "auto" and "calibration" in diag:
        from ..calibration import CalibrationResult

        print(CalibrationResult.from_dict(diag["calibration"]).table())
    print(result.summary())
    rows = diag.get("data") or {}
    if rows.get("rows_dropped_empty"):
        print(
            f"data: {rows['rows_dropped_empty']} of {rows['rows_in']} rows have no target token "
            "(e.g. empty texts) and are not counted in n (--keep-empty-rows counts them)"
        )
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
            "revision": args.dataset_revision,
            "fingerprint": getattr(data, "_fingerprint", None),
        }
        write_json(args.output, out)
        print(f"wrote {args.output}")
    if args.plot is not None:
        result.plot(args.plot)
        print(f"wrote {args.plot}")
    entry = dict(
        _card_dataset(args, data),
        model_revision=args.revision,
        model_name=args.card_model_name,
        plot_path=args.plot,
    )
    if args.write_card:
        from ..modelcard import write_llc_to_model_card

        card = write_llc_to_model_card(args.model, result, **entry)
        print(f"wrote the LLC into {card}")
    if args.push_to_hub is not None:
        from ..modelcard import push_llc_to_hub

        commit = push_llc_to_hub(
            args.push_to_hub,
            result,
            **entry,
            revision=args.hub_revision,
            create_pr=not args.no_pr,
            token=args.hub_token,
            commit_message=args.commit_message,
        )
        url = getattr(commit, "pr_url", None) or getattr(commit, "commit_url", None) or commit
        what = "opened a pull request" if not args.no_pr else "committed"
        print(f"{what} with the LLC on {args.push_to_hub}: {url}")
    return 0


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _check_writable(path: Path, flag: str = "--output") -> None:
    """See :func:`hf_llc.serialization.check_output_path` (folder, directories, special and
    read-only files, symbolic links)."""
    from ..serialization import check_output_path

    check_output_path(path, flag)


def _calibrate(args: argparse.Namespace) -> int:
    from ..calibration import calibrate_step_size

    cfg = config_from_args(args)
    _check_outputs(args)
    model, data, kwargs = load_inputs(args)
    calibration = calibrate_step_size(
        model,
        data,
        cfg,
        grid=args.grid,
        min_acceptance=args.min_acceptance,
        pilot_burnin=args.pilot_burnin,
        pilot_draws=args.pilot_draws,
        **kwargs,
    )
    main_process = _is_main_process()
    if main_process:
        print(calibration.table())
        if args.output is not None:  # the JSON first (see _report_estimate)
            from ..serialization import write_json

            out = calibration.to_dict()
            out["model"] = {"name_or_path": args.model, "revision": args.revision}
            out["config"] = cfg.to_dict()
            write_json(args.output, out)
            print(f"wrote {args.output}")
        if args.plot is not None:
            calibration.plot(args.plot)
            print(f"wrote {args.plot}")
    if not args.write_card and args.push_to_hub is None:
        return 0
    from ..estimator import estimate_llc

    chosen = replace(cfg, step_size=calibration.chosen_step_size)
    result = estimate_llc(model, data, chosen, **kwargs)
    # The card records how ε was chosen next to the estimate made with it.
    result.diagnostics["calibration"] = calibration.to_dict()
    args.output = args.plot = None  # those were the sweep's
    return _report_estimate(args, chosen, result, data)


def _trajectory_checkpoints(args: argparse.Namespace) -> list:
    """The checkpoints ``trajectory`` estimates, from MODEL, --revisions or --checkpoints."""
    from ..trajectory import find_checkpoints

    if args.revisions is not None and args.checkpoints is not None:
        raise ValueError("--revisions and --checkpoints are alternatives: pass one of them.")
    if args.revisions is not None and "revision" in args.given:
        raise ValueError("--revision does nothing with --revisions (each is a revision): drop it.")
    if args.checkpoints is not None:
        return [c for folder in args.checkpoints for c in find_checkpoints(folder)]
    return find_checkpoints(args.model, revisions=args.revisions)


def _trajectory(args: argparse.Namespace) -> int:
    from ..trajectory import estimate_trajectory, plot_trajectory
    from .inputs import load_data_and_options, load_options, loss_functions, quiet_loading

    cfg = config_from_args(args)
    _check_flags(args)
    checkpoints = _trajectory_checkpoints(args)
    if args.output is None:
        if not Path(args.model).is_dir():
            raise ValueError(f"{args.model} is not a local folder: pass --output FILE.json.")
        args.output = Path(args.model) / "llc_trajectory.json"
    _check_writable(args.output)
    if args.plot is not None:
        from ..plotting import check_plot_path

        check_plot_path(args.plot, "--plot")
    if args.write_card:
        remote = [c.key for c in checkpoints if not Path(c.path).is_dir()]
        if remote:
            raise ValueError(
                f"--write-card writes README.md in local checkpoint folders; {remote[0]} is "
                "not one: drop --write-card."
            )
    quiet_loading(args)
    first = checkpoints[0]
    data, kwargs = load_data_and_options(args, first.path, first.revision, loss_functions(args))
    main_process = _is_main_process()

    def report(checkpoint, result, entry) -> None:
        if not main_process:
            return
        print(
            f"step {entry['step']}: LLC = {result.llc_mean:.4g} ± {result.llc_stderr:.2g} "
            f"(s.e.), verdict {result.verdict}, {entry['seconds']:.0f}s  [{checkpoint.key}]",
            flush=True,
        )
        if args.write_card:
            from ..modelcard import write_llc_to_model_card

            write_llc_to_model_card(checkpoint.path, result, **_card_dataset(args, data))

    curve = estimate_trajectory(
        checkpoints,
        data,
        cfg,
        output=args.output if main_process else None,
        resume_from=args.output,
        load_kwargs=load_options(args),
        on_result=report,
        **kwargs,
    )
    if not main_process:
        return 0
    print(f"{len(curve['checkpoints'])} checkpoints; wrote {args.output}")
    if args.plot is not None:
        plot_trajectory(curve, args.plot)
        print(f"wrote {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run ``hf-llc`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.log_level is not None:
        set_verbosity(args.log_level)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        if args.command == "validate":
            return _validate(args)
        if args.command == "estimate":
            return _estimate(args)
        if args.command == "calibrate":
            return _calibrate(args)
        if args.command == "trajectory":
            return _trajectory(args)
    except (ValueError, OSError) as err:
        if args.debug:
            raise
        message = " ".join(str(err).split())  # one line, even for wrapped library errors
        parser.exit(2, f"hf-llc {args.command}: error: {message}\n")
    return 1

r"""Step-size calibration: short pilot chains over a grid of ε, keep the largest healthy one.

``SamplerConfig(step_size="auto")`` (and ``hf-llc calibrate``) runs, before the real chains:

1. an anchor pilot with the curvature step (ε = ``step_scale`` / λ_max, re-measured during its
   burn-in; see :class:`~hf_llc.sampling.SamplerConfig`) over the full burn-in, whose final ε
   sets the grid's centre ε_c (unless a grid is given);
2. one pilot chain per grid point ε_k = ε_c · 2^k (k = −3 … 0 by default), each with a fixed
   ε, MALA acceptance recorded, no restarts, and the same generator (chain 0's seed) for every
   ε, so that the rows differ by ε and not by their data order and noise;
3. the choice: the largest ε below the smallest one that diverged whose pilot is flat
   (|flatness| ≤ the one-chain limit of :func:`hf_llc.diagnostics.flatness_threshold`) and has
   a mean MALA acceptance ≥ ``min_acceptance``.

Why those checks: a divergence bounds ε from above; MALA acceptance measures how far one SGLD
step is from an exact Langevin step, so it bounds the discretisation bias that a large ε
brings; flatness rejects ε too small for the pilot to reach equilibrium (slow mixing). Among
the ε that pass, the largest mixes fastest.

Why the pilots are not short: they run the real chains' full burn-in (only their draws are
short), because the curvature, and with it the acceptance, grows as a chain moves away from w*;
pilots of a few hundred steps measure the acceptance of a region the real chains leave.

The real chains then run at the chosen fixed ε (burn-in and draws alike). The sweep and the
choice are in ``LLCResult.diagnostics["calibration"]`` and in the model card.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from ._text import fmt as _fmt
from ._text import table_lines
from .checkpoint import ChainStopped, releases_run_locks
from .diagnostics import flatness_threshold, trace_flatness
from .plotting import _import_matplotlib, save_figure
from .posterior import Posterior, RunContext, checked_config, open_posterior
from .sampling import SamplerConfig, run_chain
from .serialization import check_format, format_header, to_plain, write_json

#: Mean MALA acceptance a pilot needs to be chosen ("healthy ≈ 0.9"): the Euler step inflates
#: the stiffest directions' variance by 1 / (1 − εh/2), so the bias grows as acceptance falls.
DEFAULT_MIN_ACCEPTANCE = 0.9
#: Exponents k of the default grid ε_c · 2^k at and below the curvature step ε_c: larger steps
#: read high over full chains, so the grid starts at ε_c and backs off where the pilots show
#: instability, a rising trace or low acceptance.
DEFAULT_GRID_EXPONENTS = (-3, -2, -1, 0)
#: Draws of the anchor pilot (only its final step size is used).
ANCHOR_DRAWS = 20


@dataclass
class CalibrationResult:
    """A step-size sweep: one row per ε and the choice.

    Each row of ``sweep`` has ``step_size`` (ε), ``llc`` (the pilot's λ̂), ``mala_acceptance``
    (its mean), ``flatness``, ``diverged``, ``divergence_step`` and ``checks`` (``"ok"`` or
    what failed: ``"diverged"``, ``"not flat"``, ``"acceptance < 0.9"``, ``"above a diverged
    ε"``). ``chosen_step_size`` is the ε the real chains use; ``reason`` says why.
    """

    sweep: list[dict]
    chosen_step_size: float
    reason: str
    anchor_step_size: float | None
    min_acceptance: float
    pilot: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-ready dict (see :meth:`from_dict`), headed by ``"format":
        "hf_llc.calibration_result"`` and ``"format_version"``."""
        return to_plain(
            {
                **format_header("calibration_result"),
                "sweep": self.sweep,
                "chosen_step_size": self.chosen_step_size,
                "reason": self.reason,
                "anchor_step_size": self.anchor_step_size,
                "min_acceptance": self.min_acceptance,
                "pilot": self.pilot,
            }
        )

    @classmethod
    def from_dict(cls, data: dict, *, source: str | Path | None = None) -> CalibrationResult:
        """Inverse of :meth:`to_dict` (``None`` values, as JSON leaves NaN, become NaN; other
        keys, such as the CLI's ``model`` and ``config``, are ignored). A dict without
        ``format`` loads too; another kind of file or a newer ``format_version`` raises
        ``ValueError`` (``source`` names the file)."""
        check_format(data, "calibration_result", source)
        nan = float("nan")
        rows = [
            {
                k: (nan if v is None and k in ("llc", "mala_acceptance", "flatness") else v)
                for k, v in row.items()
            }
            for row in data.get("sweep") or []
        ]
        return cls(
            sweep=rows,
            chosen_step_size=data["chosen_step_size"],
            reason=data.get("reason", ""),
            anchor_step_size=data.get("anchor_step_size"),
            min_acceptance=data.get("min_acceptance", DEFAULT_MIN_ACCEPTANCE),
            pilot=data.get("pilot") or {},
        )

    def save(self, path: str | Path) -> Path:
        """Write the sweep as JSON (atomically; see :func:`hf_llc.serialization.write_json`)."""
        return write_json(path, self.to_dict(), make_parents=True)

    @classmethod
    def load(cls, path: str | Path) -> CalibrationResult:
        """Read a sweep written by :meth:`save` (or ``hf-llc calibrate --output``)."""
        return cls.from_dict(json.loads(Path(path).read_text()), source=path)

    def table(self) -> str:
        """The sweep as a plain-text table, the chosen row marked with ``*``."""
        head = ["", "step size ε", "λ̂ (pilot)", "MALA", "flatness", "checks"]
        rows = []
        for row in self.sweep:
            mark = "*" if row["step_size"] == self.chosen_step_size else ""
            rows.append(
                [
                    mark,
                    f"{row['step_size']:.3g}",
                    _fmt(row.get("llc"), ".4g"),
                    _fmt(row.get("mala_acceptance"), ".3f"),
                    _fmt(row.get("flatness"), "+.2f"),
                    row.get("checks", ""),
                ]
            )
        lines = table_lines(head, rows)
        lines.append(f"chosen ε = {self.chosen_step_size:.4g}: {self.reason}")
        return "\n".join(lines)

    def plot(self, path: str | Path | None = None, *, title: str | None = None):
        """λ̂ and MALA acceptance of the pilots against ε (log scale), the chosen ε marked.

        Needs matplotlib (``pip install 'hf-llc[plot]'``); saved to ``path`` if given (format
        from the suffix, PNG without one; atomically, see :func:`hf_llc.plotting.save_figure`).
        Returns the ``matplotlib.figure.Figure``.
        """
        Figure, FigureCanvasAgg = _import_matplotlib()
        eps = np.array([r["step_size"] for r in self.sweep], dtype=np.float64)
        llc = np.array([_nan(r.get("llc")) for r in self.sweep], dtype=np.float64)
        acc = np.array([_nan(r.get("mala_acceptance")) for r in self.sweep], dtype=np.float64)
        bad = np.array([bool(r.get("diverged")) for r in self.sweep])
        fig = Figure(figsize=(9, 3.6), layout="constrained")
        FigureCanvasAgg(fig)
        ax1, ax2 = fig.subplots(1, 2)
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.set_xlabel("step size ε")
            ax.axvline(self.chosen_step_size, color="C2", ls="--", label="chosen ε")
        ax1.plot(eps[~bad], llc[~bad], "o-", color="C0", label="pilot λ̂")
        if bad.any():
            ax1.plot(eps[bad], np.zeros(bad.sum()), "x", color="C3", ms=9, label="diverged")
        ax1.set_ylabel("λ̂ (one short pilot chain)")
        ax1.legend(fontsize=8)
        ax2.plot(eps[~bad], acc[~bad], "o-", color="C1", label="mean MALA acceptance")
        ax2.axhline(self.min_acceptance, color="0.5", ls=":", label="minimum")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_ylabel("MALA acceptance")
        ax2.legend(fontsize=8)
        fig.suptitle(title or f"step-size calibration: chosen ε = {self.chosen_step_size:.3g}")
        if path is not None:
            save_figure(fig, path, dpi=100)
        return fig


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def pilot_config(
    cfg: SamplerConfig, *, pilot_burnin: int | None, pilot_draws: int | None
) -> SamplerConfig:
    """The settings of one pilot: ``cfg`` with short chains, MALA on and no restarts.

    Default lengths: the real chains' burn-in (see the module docstring for why) and
    min(num_draws, 200) draws.
    """
    burnin = cfg.num_burnin if pilot_burnin is None else pilot_burnin
    draws = min(cfg.num_draws, 200) if pilot_draws is None else pilot_draws
    if not isinstance(burnin, int) or burnin < 0:
        raise ValueError(f"pilot_burnin must be an integer ≥ 0, got {burnin!r}.")
    if not isinstance(draws, int) or draws < 8:
        raise ValueError(
            f"pilot_draws must be an integer ≥ 8 (the flatness check needs draws), got {draws!r}."
        )
    return replace(
        cfg,
        num_chains=1,
        num_burnin=burnin,
        num_draws=draws,
        draw_every=1,
        mala=True,
        divergence_retries=0,
    )


def calibrate_problem(
    problem: Any,
    w_star: Tensor,
    cfg: SamplerConfig,
    *,
    nbeta: float,
    init_loss: float,
    init_per_sample: Tensor | None = None,
    precond_diagonal: Tensor | None = None,
    grid: list[float] | None = None,
    min_acceptance: float = DEFAULT_MIN_ACCEPTANCE,
    pilot_burnin: int | None = None,
    pilot_draws: int | None = None,
    checkpoint: Any = None,
) -> CalibrationResult:
    """The sweep on a loss problem (what :func:`hf_llc.estimate_llc` builds from a model).

    ``grid``: the ε to try (default: ε_c · 2^k, k in ``DEFAULT_GRID_EXPONENTS``, ε_c from an
    anchor pilot with the curvature step). Pilots run :func:`hf_llc.sampling.run_chain` as
    chain 0 of ``cfg.seed``. ``checkpoint``: a :class:`~hf_llc.sampling.ChainCheckpoint`
    every pilot reports to (``estimate_llc`` passes one that stops the pilots on a signal).
    """
    if not 0.0 <= min_acceptance <= 1.0:
        raise ValueError(f"min_acceptance must be in [0, 1], got {min_acceptance!r}.")
    base = pilot_config(cfg, pilot_burnin=pilot_burnin, pilot_draws=pilot_draws)
    kwargs = dict(
        nbeta=nbeta,
        init_loss=init_loss,
        init_per_sample=init_per_sample,
        precond_diagonal=precond_diagonal,
        checkpoint=checkpoint,
    )
    anchor = None
    if grid is None:
        anchor_cfg = replace(base, step_size="curvature", num_draws=ANCHOR_DRAWS, mala=False)
        first = run_chain(problem, w_star, anchor_cfg, 0, **kwargs)
        anchor = float(first.step_size)
        grid = [anchor * 2.0**k for k in DEFAULT_GRID_EXPONENTS]
    grid = sorted(float(e) for e in grid)
    if not grid or not all(math.isfinite(e) and e > 0 for e in grid):
        raise ValueError(f"grid must be a non-empty list of positive step sizes, got {grid!r}.")
    rows = []
    for eps in grid:
        ch = run_chain(problem, w_star, replace(base, step_size=eps), 0, **kwargs)
        row = {"step_size": eps, "diverged": bool(ch.diverged), "divergence_step": None}
        if ch.diverged:
            row.update(llc=float("nan"), mala_acceptance=float("nan"), flatness=float("nan"))
            row["divergence_step"] = ch.divergence_step
        else:
            loss = ch.loss_trace.numpy()
            ref = ch.init_batch_trace.numpy() if ch.init_batch_trace is not None else init_loss
            excess = nbeta * (loss - ref)
            row["llc"] = nbeta * (float(loss.mean()) - init_loss)
            acc = ch.mala_acceptance.numpy() if ch.mala_acceptance is not None else np.empty(0)
            row["mala_acceptance"] = float(acc.mean()) if len(acc) else float("nan")
            row["flatness"] = trace_flatness(excess)
        rows.append(row)

    chosen, reason = choose_step_size(rows, min_acceptance=min_acceptance)
    return CalibrationResult(
        sweep=rows,
        chosen_step_size=chosen,
        reason=reason,
        anchor_step_size=anchor,
        min_acceptance=min_acceptance,
        pilot={
            "num_burnin": base.num_burnin,
            "num_draws": base.num_draws,
            "seed": base.seed,
            "chain": 0,
            "step_scale": base.step_scale,
        },
    )


def choose_step_size(rows: list[dict], *, min_acceptance: float) -> tuple[float, str]:
    """The ε to use from sweep rows (``step_size``, ``diverged``, ``flatness``,
    ``mala_acceptance``); also writes each row's ``checks``. Returns (ε, reason).

    The largest ε below the smallest diverged one whose pilot is flat and has acceptance ≥
    ``min_acceptance``; failing that, the largest stable one with enough acceptance; failing
    that, the smallest stable one. Raises ``ValueError`` when every pilot diverged.
    """
    limit = flatness_threshold(1)
    grid = sorted(r["step_size"] for r in rows)
    diverged = [r["step_size"] for r in rows if r["diverged"]]
    ceiling = min(diverged) if diverged else math.inf
    for r in rows:
        problems = []
        if r["diverged"]:
            problems.append("diverged")
        elif r["step_size"] > ceiling:
            problems.append("above a diverged ε")
        if not r["diverged"]:
            if not abs(r["flatness"]) <= limit:
                problems.append("not flat")
            if not r["mala_acceptance"] >= min_acceptance:
                problems.append(f"acceptance < {min_acceptance:g}")
        r["checks"] = ", ".join(problems) or "ok"
    good = [r for r in rows if r["checks"] == "ok"]
    if good:
        chosen = max(r["step_size"] for r in good)
        reason = (
            f"the largest ε that is stable, flat (|flatness| ≤ {limit:.2f}) and has MALA "
            f"acceptance ≥ {min_acceptance:g}"
        )
    else:
        stable = [r for r in rows if not r["diverged"] and r["step_size"] < ceiling]
        accepted = [r for r in stable if r["mala_acceptance"] >= min_acceptance]
        if accepted:
            chosen = max(r["step_size"] for r in accepted)
            reason = (
                "no ε passed every check; chose the largest stable one with MALA acceptance "
                f"≥ {min_acceptance:g} (its pilot was not flat: the real chains' burn-in must "
                "do more; check the verdict)"
            )
        elif stable:
            chosen = min(r["step_size"] for r in stable)
            reason = (
                "no ε passed every check; chose the smallest stable one (check the verdict, "
                "or pass a grid of smaller step sizes)"
            )
        else:
            raise ValueError(
                f"every pilot diverged (ε from {grid[0]:.3g} to {grid[-1]:.3g}); pass a grid of "
                "smaller step sizes (calibrate_step_size(..., grid=[...])) or check the loss."
            )
    return chosen, reason


@releases_run_locks  # an output_dir lock is released however the call ends
def calibrate_step_size(
    model: nn.Module,
    dataset: Any,
    config: SamplerConfig | None = None,
    *,
    grid: list[float] | None = None,
    min_acceptance: float = DEFAULT_MIN_ACCEPTANCE,
    pilot_burnin: int | None = None,
    pilot_draws: int | None = None,
    **estimate_kwargs: Any,
) -> CalibrationResult:
    """Choose the SGLD step size ε for ``model`` on ``dataset`` with short pilot chains.

    Args:
        model, dataset: as for :func:`hf_llc.estimate_llc`.
        config: the settings the real chains will use (nβ, γ, batch size, preconditioner,
            seed…); its ``step_size`` is ignored. Default: ``SamplerConfig()``.
        grid: the ε to try; default ε_c · 2^k for k = −3 … 0, at and below the curvature step ε_c
            measured by an anchor pilot.
        min_acceptance: the mean MALA acceptance a pilot needs (default 0.9).
        pilot_burnin, pilot_draws: pilot length (default: the config's burn-in, and
            min(its draws, 200) draws).
        **estimate_kwargs: ``loss_fn``, ``tokenizer``, ``num_samples``, ``accelerator``… as
            for :func:`hf_llc.estimate_llc` (data preparation is the same; ``progress`` is
            accepted and the pilots show no bar). With ``output_dir`` the sweep is kept there
            as for ``step_size="auto"``.

    Returns:
        :class:`CalibrationResult`: ``.table()``, ``.plot(path)``, ``.chosen_step_size``.
        Pass ``SamplerConfig(step_size=result.chosen_step_size)`` to ``estimate_llc``, or use
        ``step_size="auto"`` to calibrate and estimate in one call.
    """
    cfg = config if config is not None else SamplerConfig()
    if not isinstance(cfg, SamplerConfig):
        raise ValueError(f"config must be a SamplerConfig, got {type(config).__name__}.")
    # The run's settings (and so its manifest) are those of step_size="auto".
    cfg = checked_config(replace(cfg, step_size="auto"))
    options = {
        "grid": grid,
        "min_acceptance": min_acceptance,
        "pilot_burnin": pilot_burnin,
        "pilot_draws": pilot_draws,
    }
    estimate_kwargs.pop("progress", None)
    with open_posterior(model, dataset, cfg, **estimate_kwargs) as (run, posterior):
        return calibrate_posterior(posterior, cfg, run, options)


def calibrate_posterior(
    posterior: Posterior,
    cfg: SamplerConfig,
    run: RunContext,
    options: Mapping[str, Any] | None = None,
) -> CalibrationResult:
    """The sweep (:func:`calibrate_problem` with ``options``) on a run's posterior.

    With an output folder the sweep is kept there (``calibration.json``) and a resume with the
    same settings and options reuses it, and SIGINT/SIGTERM stop the pilots with
    :class:`~hf_llc.checkpoint.EstimateInterrupted`.
    """
    opts = dict(options or {})
    run_dir = run.run_dir
    saved = run_dir.load_calibration(opts) if run_dir is not None and run.resume else None
    if saved is not None:
        return CalibrationResult.from_dict(saved)
    try:
        with run.catch_signals():
            calibration = calibrate_problem(
                posterior.problem,
                posterior.w_star,
                cfg,
                nbeta=posterior.nbeta,
                init_loss=posterior.init_loss,
                init_per_sample=posterior.init_per_sample,
                precond_diagonal=posterior.precond_diagonal,
                checkpoint=None if run_dir is None else run_dir.stop_on_signal(),
                **opts,
            )
    except ChainStopped as stop:
        raise run_dir.interrupted_in_calibration(stop.signum) from None
    if run_dir is not None:
        run_dir.save_calibration(calibration, opts)
    return calibration


__all__ = [
    "DEFAULT_MIN_ACCEPTANCE",
    "CalibrationResult",
    "calibrate_posterior",
    "calibrate_problem",
    "calibrate_step_size",
    "pilot_config",
]

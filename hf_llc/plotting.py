"""Diagnostic plots of an :class:`~hf_llc.estimator.LLCResult`.

matplotlib is an optional dependency (``pip install 'hf-llc[plot]'``). The figure is drawn with
``matplotlib.figure.Figure`` and the Agg canvas directly, so pyplot and the user's global
backend are left untouched.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._text import fmt
from .serialization import atomic_write, check_output_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from hf_llc.estimator import LLCResult

_INSTALL_HINT = (
    "plotting needs matplotlib, which is an optional extra: pip install 'hf-llc[plot]' "
    "(or pip install matplotlib)"
)


def _import_matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return Figure, FigureCanvasAgg


def _as_float_array(values: Any) -> np.ndarray:
    """1-D float array; ``None`` (as left by a JSON round trip) becomes NaN."""
    if values is None:
        return np.empty(0)
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False).ravel()
    if hasattr(values, "tolist"):  # e.g. a torch tensor
        values = values.tolist()
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64).ravel()


def _fmt(x: float, spec: str = ".4g") -> str:
    return fmt(x, spec, missing="nan")


def _chain_traces(result: LLCResult) -> tuple[list[np.ndarray], list[np.ndarray], int, int]:
    """Per chain (steps, losses) over burn-in followed by the draws, plus num_burnin, draw_every."""
    trace = np.asarray(result.loss_trace, dtype=np.float64)
    if trace.ndim == 1:
        trace = trace[None, :]
    diag = result.diagnostics or {}
    cfg = result.config or {}
    burnin = [_as_float_array(b) for b in diag.get("burnin_trace") or []]
    num_chains = max(trace.shape[0] if trace.size else 0, len(burnin))
    num_burnin = cfg.get("num_burnin")
    if num_burnin is None:
        num_burnin = max((len(b) for b in burnin), default=0)
    num_burnin = int(num_burnin)
    draw_every = max(1, int(cfg.get("draw_every") or 1))

    steps, losses = [], []
    for i in range(num_chains):
        b = burnin[i] if i < len(burnin) else np.empty(0)
        d = trace[i] if i < trace.shape[0] else np.empty(0)
        x = np.concatenate([np.arange(len(b)), num_burnin + draw_every * np.arange(len(d))])
        y = np.concatenate([b, d])
        keep = np.isfinite(y)
        steps.append(x[keep])
        losses.append(y[keep])
    return steps, losses, num_burnin, draw_every


def plot_llc_result(
    result: LLCResult, path: str | os.PathLike | None = None, *, title: str | None = None
) -> Figure:
    """Draw the loss traces and per-chain λ̂ of ``result``; save to ``path`` if given.

    Left panel: L_{B_t}(w_t) per chain against the SGLD step (burn-in shaded, then the draws at
    ``num_burnin + k·draw_every``), a dashed line at L_n(w*), and an ✕ where a chain diverged.
    Right panel: λ̂ per chain with the mean ± std over the chains that did not diverge.

    Args:
        result: an :class:`~hf_llc.estimator.LLCResult` (also one read back by ``LLCResult.load``).
        path: where to write the figure; the format follows the suffix (PNG when there is
            none). Written atomically: a temporary file in the same folder, renamed into place.
        title: a first title line (e.g. the model name) above the λ̂ ± std summary.

    Returns:
        The ``matplotlib.figure.Figure`` (not registered with pyplot).

    Raises:
        ImportError: matplotlib is not installed (install ``hf-llc[plot]``).
    """
    Figure, FigureCanvasAgg = _import_matplotlib()

    steps, losses, num_burnin, draw_every = _chain_traces(result)
    per_chain = _as_float_array(result.llc_per_chain)
    num_chains = max(len(steps), len(per_chain))
    divergences = list((result.diagnostics or {}).get("divergences") or [])
    diverged = {int(d["chain"]) for d in divergences if d.get("chain") is not None}
    diverged |= {i for i, v in enumerate(per_chain) if not math.isfinite(v)}
    init_loss = float(result.init_loss) if result.init_loss is not None else math.nan

    fig = Figure(figsize=(11, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_trace, ax_llc = fig.subplots(1, 2, width_ratios=[3, 1.15])

    traces = (steps, losses, num_burnin, draw_every)
    _draw_traces(ax_trace, traces, diverged, divergences, init_loss, label_chains=num_chains <= 10)
    mean, std = float(result.llc_mean), float(result.llc_std)
    _draw_chain_llcs(ax_llc, per_chain, mean, std)

    used = int(np.isfinite(per_chain).sum())
    summary = (
        rf"$\hat\lambda$ = {_fmt(mean)} ± {_fmt(std, '.3g')}   "
        rf"(n$\beta$ = {_fmt(float(result.nbeta))}, n = {result.num_samples}, "
        f"{used}/{len(per_chain)} chains)"
    )
    fig.suptitle(f"{title}\n{summary}" if title else summary)

    if path is not None:
        save_figure(fig, path)
    return fig


def _draw_traces(
    ax_trace: Any,
    traces: tuple[list[np.ndarray], list[np.ndarray], int, int],
    diverged: set[int],
    divergences: list[dict],
    init_loss: float,
    *,
    label_chains: bool,
) -> None:
    """Panel 1: L_{B_t}(w_t) per chain against the SGLD step (``traces`` as from
    :func:`_chain_traces`), the burn-in shaded, L_n(w*) dashed, an ✕ where a chain diverged;
    the y-range from the healthy chains. ``label_chains``: a legend entry per chain."""
    steps, losses, num_burnin, draw_every = traces
    for i in range(len(steps)):
        if not len(steps[i]):
            continue
        ax_trace.plot(
            steps[i],
            losses[i],
            color=f"C{i % 10}",
            lw=0.8,
            alpha=0.85,
            ls=":" if i in diverged else "-",
            label=(f"chain {i}" + (" (diverged)" if i in diverged else ""))
            if label_chains
            else None,
        )
    if num_burnin > 0:
        ax_trace.axvspan(-0.5, num_burnin - 0.5, color="0.85", alpha=0.6, lw=0, label="burn-in")
    if math.isfinite(init_loss):
        ax_trace.axhline(init_loss, color="k", ls="--", lw=1.2, label=r"$L_n(w^*)$")

    # y-limits from the healthy chains, so a diverging chain does not flatten the others.
    healthy_y = [y for i, y in enumerate(losses) if i not in diverged and len(y)]
    if healthy_y:
        ys = np.concatenate(
            healthy_y + ([np.array([init_loss])] if math.isfinite(init_loss) else [])
        )
        lo, hi = float(ys.min()), float(ys.max())
        pad = 0.06 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
        ylo, yhi = lo - pad, hi + pad
        ax_trace.set_ylim(ylo, yhi)
    else:
        ylo, yhi = -math.inf, math.inf

    _mark_divergences(ax_trace, divergences, losses, init_loss, ylo, yhi)
    ax_trace.set_xlabel("SGLD step" + (f" (draws every {draw_every})" if draw_every > 1 else ""))
    ax_trace.set_ylabel(r"minibatch loss $L_{B_t}(w_t)$")
    ax_trace.set_title("Loss trace per chain")
    ax_trace.grid(alpha=0.3)
    # Below the axes, so it never hides the traces.
    entries = len(ax_trace.get_legend_handles_labels()[0])
    ax_trace.legend(
        fontsize="small",
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncols=max(1, min(entries, 5)),
        frameon=False,
    )


def _mark_divergences(
    ax_trace: Any,
    divergences: list[dict],
    losses: list[np.ndarray],
    init_loss: float,
    ylo: float,
    yhi: float,
) -> None:
    """An ✕ at each divergence's step, at the chain's last finite loss clipped to [ylo, yhi]."""
    marked = False
    for d in divergences:
        ch, step = d.get("chain"), d.get("step")
        if ch is None or step is None:
            continue
        ch = int(ch)
        y = losses[ch][-1] if ch < len(losses) and len(losses[ch]) else init_loss
        if not math.isfinite(y):
            continue
        ax_trace.plot(
            [step],
            [min(max(y, ylo), yhi)],
            marker="X",
            ms=11,
            color=f"C{ch % 10}",
            mec="k",
            ls="none",
            clip_on=False,
            zorder=5,
            label=None if marked else "divergence",
        )
        marked = True


def _draw_chain_llcs(ax_llc: Any, per_chain: np.ndarray, mean: float, std: float) -> None:
    """Panel 2: λ̂ per chain, "diverged" where it is NaN, and the mean ± std band."""
    idx = np.arange(len(per_chain))
    ok = np.isfinite(per_chain)
    if math.isfinite(mean):
        if math.isfinite(std) and std > 0:
            ax_llc.axhspan(mean - std, mean + std, color="C0", alpha=0.15, lw=0, label="± std")
        ax_llc.axhline(mean, color="C0", lw=1.8, label=rf"mean $\hat\lambda$ = {_fmt(mean)}")
    ax_llc.scatter(
        idx[ok],
        per_chain[ok],
        c=[f"C{i % 10}" for i in idx[ok]],
        s=45,
        edgecolors="k",
        zorder=3,
    )
    for i in idx[~ok]:
        ax_llc.annotate(
            "diverged",
            (i, 0.02),
            xycoords=("data", "axes fraction"),
            ha="center",
            va="bottom",
            rotation=90,
            fontsize="small",
            color=f"C{i % 10}",
        )
    if len(per_chain):
        ax_llc.set_xlim(-0.6, len(per_chain) - 0.4)
        if len(per_chain) <= 16:
            ax_llc.set_xticks(idx)
    if ok.any():
        vals = np.concatenate(
            [per_chain[ok], [mean - std, mean + std] if math.isfinite(std) else []]
        )
        vals = vals[np.isfinite(vals)]
        lo, hi = float(vals.min()), float(vals.max())
        pad = 0.15 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
        ax_llc.set_ylim(lo - pad, hi + pad)
    ax_llc.set_xlabel("chain")
    ax_llc.set_ylabel(r"$\hat\lambda$")
    ax_llc.set_title(r"$\hat\lambda$ per chain")
    ax_llc.grid(alpha=0.3)
    if math.isfinite(mean):
        ax_llc.legend(fontsize="small", loc="best")


def plot_format(path: str | os.PathLike, what: str = "path") -> str:
    """The image format of a plot path (its suffix; PNG without one), checked before drawing.

    Args:
        path: where the plot goes.
        what: the flag or argument named in the error (``"--plot"``, ``"path"``).

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: matplotlib cannot write that suffix (the message lists those it can).
    """
    _, FigureCanvasAgg = _import_matplotlib()
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasAgg.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"{what} {str(path)!r}: cannot save a plot as {path.name!r}: use one of the "
            "suffixes " + ", ".join(f".{s}" for s in sorted(supported))
        )
    return fmt


def check_plot_path(path: str | os.PathLike, what: str = "--plot") -> None:
    """Everything about a plot path that can be checked before any work: the suffix (see
    :func:`plot_format`), and that the file can be written (see
    :func:`hf_llc.serialization.check_output_path`). Raises ``ValueError``/``ImportError``."""
    plot_format(path, what)
    check_output_path(path, what)


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Save ``fig`` to ``path`` (format from the suffix, PNG without one), atomically; links
    and special files are handled as by :func:`hf_llc.serialization.atomic_write`."""
    path = Path(path)
    fmt = plot_format(path)
    atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, dpi=dpi), make_parents=True)
    return path


def plot_llc_history(
    history: list[dict],
    path: str | os.PathLike | None = None,
    *,
    reference: tuple[Any, Any, str] | None = None,
    loss: tuple[Any, Any, str] | None = None,
    log_steps: bool | None = None,
    title: str | None = None,
) -> Figure:
    """Draw λ̂ against the training step (the curve of :class:`hf_llc.LLCCallback`).

    λ̂ is drawn with a band of ± 2 standard errors across chains.

    Args:
        history: entries with ``step``, ``llc_mean`` and ``llc_stderr`` (the callback's
            ``history``, or the ``"history"`` list of its ``llc_history.json``).
        path: where to save the figure (atomically; format from the suffix, PNG by default).
        reference: optional ``(steps, values, label)`` drawn as a step line on the λ axis,
            e.g. a theoretical learning coefficient.
        loss: optional ``(steps, values, label)`` drawn on a second, logarithmic y axis.
        log_steps: logarithmic step axis (default: when the steps span over two decades).
        title: the figure title.

    Returns:
        The ``matplotlib.figure.Figure``.

    Raises:
        ImportError: matplotlib is not installed (install ``hf-llc[plot]``).
        ValueError: ``history`` is empty.
    """
    Figure, FigureCanvasAgg = _import_matplotlib()
    if not history:
        raise ValueError("history is empty: there is no LLC estimate to plot.")
    steps = np.array([float(e["step"]) for e in history])
    mean = _as_float_array([e.get("llc_mean") for e in history])
    stderr = _as_float_array([e.get("llc_stderr") for e in history])

    fig = Figure(figsize=(8.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.fill_between(steps, mean - 2 * stderr, mean + 2 * stderr, color="C0", alpha=0.2, lw=0)
    ax.plot(steps, mean, "o-", color="C0", ms=3.5, lw=1.4, label=r"$\hat\lambda$ (± 2 s.e.)")
    if reference is not None:
        ref_steps, ref_values, ref_label = reference
        ax.step(ref_steps, ref_values, where="post", color="C3", lw=1.6, ls="--", label=ref_label)
    ax.set_xlabel("training step")
    ax.set_ylabel(r"LLC $\hat\lambda$")
    ax.grid(alpha=0.3)
    positive = steps[steps > 0]
    if log_steps is None:
        log_steps = len(positive) > 1 and positive.max() / positive.min() > 100
    if log_steps:
        ax.set_xscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if loss is not None:
        loss_steps, loss_values, loss_label = loss
        ax_loss = ax.twinx()
        ax_loss.plot(loss_steps, loss_values, color="0.45", lw=1.0, label=loss_label)
        ax_loss.set_yscale("log")
        ax_loss.set_ylabel(loss_label)
        h2, l2 = ax_loss.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize="small", loc="best")
    if title:
        ax.set_title(title)
    if path is not None:
        save_figure(fig, path)
    return fig

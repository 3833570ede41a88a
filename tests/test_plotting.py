"""plot_llc_result: two panels, an atomic PNG on disk, a clear error without matplotlib."""

from __future__ import annotations

import builtins
import sys

import numpy as np
import pytest

from hf_llc.estimator import LLCResult
from hf_llc.plotting import plot_llc_result

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _synthetic_result(num_chains=4, num_burnin=40, num_draws=30, draw_every=2) -> LLCResult:
    """Chains that rise from L_n(w*) = 1.0 and settle; chain 2 diverges during the draws."""
    rng = np.random.default_rng(0)
    init_loss, nbeta, n = 1.0, 50.0, 1000
    steps = num_burnin + num_draws * draw_every
    div_chain, div_step = 2, num_burnin + 20 * draw_every
    burnin, trace, per_chain = [], np.full((num_chains, num_draws), np.nan), []
    for c in range(num_chains):
        t = np.arange(steps)
        level = 0.05 + 0.01 * c
        full = init_loss + level * (1 - np.exp(-t / 10)) + 0.01 * rng.standard_normal(steps)
        if c == div_chain:
            full[div_step - 10 :] += np.linspace(0, 0.5, steps - div_step + 10)
            full = full[:div_step]
        burnin.append(full[:num_burnin])
        draws = full[num_burnin::draw_every][:num_draws]
        trace[c, : len(draws)] = draws
        per_chain.append(float("nan") if c == div_chain else nbeta * (draws.mean() - init_loss))
    good = np.array([v for v in per_chain if np.isfinite(v)])
    return LLCResult(
        llc_mean=float(good.mean()),
        llc_std=float(good.std(ddof=1)),
        llc_stderr=float(good.std(ddof=1) / np.sqrt(len(good))),
        llc_per_chain=per_chain,
        loss_trace=trace,
        init_loss=init_loss,
        nbeta=nbeta,
        num_samples=n,
        num_params=12,
        config={
            "num_burnin": num_burnin,
            "num_draws": num_draws,
            "draw_every": draw_every,
            "num_chains": num_chains,
        },
        diagnostics={
            "burnin_trace": burnin,
            "divergences": [
                {
                    "chain": div_chain,
                    "step": div_step,
                    "message": f"chain {div_chain} diverged at step {div_step}",
                }
            ],
        },
    )


def test_writes_png_with_two_panels(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sub" / "llc.png"
    fig = plot_llc_result(_synthetic_result(), out, title="synthetic")
    data = out.read_bytes()
    assert len(data) > 1000
    assert data.startswith(PNG_SIGNATURE)
    assert len(fig.axes) == 2
    assert [p.name for p in out.parent.iterdir()] == ["llc.png"]  # no temp file left behind
    assert "synthetic" in fig.get_suptitle()
    assert "n = 1000" in fig.get_suptitle()


def test_trace_panel_places_draws_after_burnin():
    pytest.importorskip("matplotlib")
    result = _synthetic_result(num_burnin=40, num_draws=30, draw_every=2)
    fig = plot_llc_result(result)
    ax = fig.axes[0]
    healthy = next(line for line in ax.get_lines() if line.get_label() == "chain 0")
    x = healthy.get_xdata()
    assert list(x[:40]) == list(range(40))
    assert list(x[40:]) == [40 + 2 * k for k in range(30)]
    marks = [line for line in ax.get_lines() if line.get_label() == "divergence"]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == 80


def test_no_path_writes_nothing_and_pyplot_untouched(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    fig = plot_llc_result(_synthetic_result())
    assert list(tmp_path.iterdir()) == []
    assert fig.canvas is not None
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:  # the figure is not registered with pyplot's figure manager
        assert fig not in [plt.figure(n) for n in plt.get_fignums()]


def test_json_round_trip_and_all_diverged(tmp_path):
    """A result read back from JSON (None → NaN, lists not arrays) still plots; so does NaN λ̂."""
    pytest.importorskip("matplotlib")
    result = _synthetic_result()
    path = result.save(tmp_path / "r.json")
    plot_llc_result(LLCResult.load(path), tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes().startswith(PNG_SIGNATURE)

    result.llc_per_chain = [float("nan")] * 4
    result.llc_mean = result.llc_std = float("nan")
    fig = plot_llc_result(result, tmp_path / "nan.png")
    assert len(fig.axes) == 2
    assert "nan" in fig.get_suptitle()


def test_unknown_suffix_is_rejected(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="suffix"):
        plot_llc_result(_synthetic_result(), tmp_path / "llc.notaformat")
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"hf-llc\[plot\]"):
        plot_llc_result(_synthetic_result())


def test_missing_matplotlib_via_import_hook(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install 'hf-llc\[plot\]'"):
        plot_llc_result(_synthetic_result())

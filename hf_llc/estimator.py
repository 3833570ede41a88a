r"""``estimate_llc``: the local learning coefficient of a model at its current weights w*.

Definitions (Lau et al., arXiv 2308.12108; Furman & Lau, arXiv 2402.03698):

- L_n(w): mean per-sample loss over the n samples of the dataset.
- Localized tempered posterior p(w) ∝ exp(−nβ·L_n(w) − (γ/2)·‖w − w*‖²), nβ = n / log n by
  default (n = dataset size, never the batch size).
- Per chain c: λ̂_c = nβ·(mean over draws t of L_{B_t}(w_t) − L_n(w*)); λ̂ = mean over chains,
  with the standard deviation and standard error across chains.
- When the loss returns per-sample values, the losses at w* are cached (n floats): L_n(w*) is
  exact and the paired estimator nβ·mean_t(L_{B_t}(w_t) − L_{B_t}(w*)) is reported as well.

The layers: :func:`hf_llc.posterior.open_posterior` prepares the data and builds the
posterior (the model's weights are never written, see :mod:`hf_llc.posterior`), the step size
is calibrated when asked (:func:`hf_llc.calibration.calibrate_posterior`), :func:`_sample`
runs the chains and :func:`_assemble` turns them into an :class:`LLCResult`.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import signal
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._logging import get_logger
from ._text import fmt as _fmt
from ._text import table_lines
from ._version import __version__
from .calibration import calibrate_posterior
from .checkpoint import (
    PARTIAL_RESULT,
    ChainStopped,
    EstimateInterrupted,
    RunCheckpoint,
    releases_run_locks,
)
from .diagnostics import (
    HALF_STEP_LENGTH,
    assess_estimate,
    chain_notes,
    robustness_report,
    trace_checks,
)
from .distributed import ProcessInfo
from .peft_support import adapter_info
from .plotting import plot_llc_result
from .posterior import (
    FlatParameters,
    ModelLoss,
    Posterior,
    RunContext,
    TensorBatches,
    _columns_from_dataset,
    _model_device,
    check_inputs,
    checked_config,
    open_posterior,
    run_manifest,
)
from .sampling import ChainResult, SamplerConfig, run_chains
from .sampling.chain import max_curvature
from .selection import ParameterSelection
from .serialization import check_format, format_header, to_plain, write_json

logger = get_logger(__name__)

__all__ = [
    "FlatParameters",
    "LLCResult",
    "ModelLoss",
    "TensorBatches",
    "_columns_from_dataset",
    "_model_device",
    "check_inputs",
    "estimate_llc",
    "run_manifest",
]


@dataclass
class LLCResult:
    """An LLC estimate with its settings, traces and diagnostics.

    ``llc_mean``/``llc_std``/``llc_stderr`` summarise ``llc_per_chain`` over the chains that
    did not diverge. ``loss_trace`` is (chains × draws) of L_{B_t}(w_t), NaN-padded where a
    chain stopped early. ``llc_paired_*`` are the paired estimator's values when per-sample
    losses were available (else ``None``). :attr:`verdict` (``"ok"``, ``"warning"``,
    ``"fail"``) and :attr:`verdict_reasons` say whether to trust λ̂; the checks behind them are
    in ``diagnostics["checks"]``, and with ``step_size="auto"`` the step-size sweep is in
    ``diagnostics["calibration"]``. ``localizer_metric`` (chains × d), recorded with
    ``SamplerConfig(record_metric=True)``, is each chain's localizer metric M (``None`` when
    not recorded or when the localizer is Euclidean).
    """

    llc_mean: float
    llc_std: float
    llc_stderr: float
    llc_per_chain: list[float]
    loss_trace: np.ndarray
    init_loss: float
    nbeta: float
    num_samples: int
    num_params: int
    config: dict
    diagnostics: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    llc_paired_mean: float | None = None
    llc_paired_std: float | None = None
    llc_paired_per_chain: list[float] | None = None
    localizer_metric: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-ready dict of plain floats and lists (missing values are ``None``), headed by
        ``"format": "hf_llc.llc_result"`` and ``"format_version"`` (see
        :func:`hf_llc.serialization.format_header`)."""
        out = format_header("llc_result")
        for key in self.__dataclass_fields__:
            out[key] = to_plain(getattr(self, key))
        return out

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON (atomically: a temporary file renamed into place)."""
        return write_json(path, self.to_dict(), make_parents=True)

    @classmethod
    def from_dict(cls, data: dict, *, source: str | Path | None = None) -> LLCResult:
        """Inverse of :meth:`to_dict`; keys it does not know (``format``, the CLI's ``model``
        and ``dataset``) are ignored. A dict without ``format`` (written before it existed)
        loads too; another kind of file or a newer ``format_version`` raises ``ValueError``
        (``source`` names the file)."""
        check_format(data, "llc_result", source)
        data = dict(data)
        trace = data.get("loss_trace") or []
        data["loss_trace"] = np.array(
            [[np.nan if v is None else v for v in row] for row in trace], dtype=np.float64
        )
        nan = float("nan")
        for key in ("llc_mean", "llc_std", "llc_stderr", "init_loss"):
            if data.get(key) is None:
                data[key] = nan
        data["llc_per_chain"] = [nan if v is None else v for v in data.get("llc_per_chain", [])]
        if data.get("localizer_metric") is not None:
            data["localizer_metric"] = np.asarray(data["localizer_metric"], dtype=np.float64)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def load(cls, path: str | Path) -> LLCResult:
        """Read a result written by :meth:`save` (or the CLI's ``--output``)."""
        return cls.from_dict(json.loads(Path(path).read_text()), source=path)

    def llc_trace(self) -> np.ndarray:
        """(chains × draws) of nβ·(L_{B_t}(w_t) − L_n(w*)): the draws whose mean over a chain
        is its λ̂_c (``llc_per_chain``); NaN where ``loss_trace`` is."""
        return self.nbeta * (np.asarray(self.loss_trace, dtype=np.float64) - self.init_loss)

    def to_pandas(self):
        """The draws in long format: a ``pandas.DataFrame`` with one row per chain × draw.

        Columns: ``chain`` and ``draw`` (0-based), ``loss`` (L_{B_t}(w_t), the minibatch loss
        of draw t), ``llc`` (nβ·(loss − L_n(w*)), whose mean over a chain's draws is its λ̂_c),
        ``step_size`` (the chain's step size during the draws, when recorded) and ``diverged``
        (whether the chain diverged; its draws after the divergence are NaN). Needs pandas
        (``pip install 'hf-llc[pandas]'``).
        """
        pd = _import_extra("pandas", "LLCResult.to_pandas()")
        trace = self._trace_2d()
        chains, draws = trace.shape
        chain = np.repeat(np.arange(chains), draws)
        columns = {
            "chain": chain,
            "draw": np.tile(np.arange(draws), chains),
            "loss": trace.reshape(-1),
            "llc": self.nbeta * (trace.reshape(-1) - self.init_loss),
        }
        steps = self._step_sizes(chains)
        if steps is not None:
            columns["step_size"] = np.repeat(steps, draws)
        columns["diverged"] = np.isin(chain, sorted(self._diverged_chains()))
        return pd.DataFrame(columns)

    def to_inference_data(self, *, include_diverged: bool = False):
        """The draws as an ``arviz.InferenceData``, for ArviZ's summaries and plots.

        ``posterior`` holds ``llc`` (nβ·(L_{B_t}(w_t) − L_n(w*)), see :meth:`llc_trace`) and
        ``loss`` per chain and draw; ``sample_stats`` the chain's ``step_size`` per draw when
        recorded. The ``chain`` coordinate keeps hf_llc's chain numbers; diverged chains are
        left out unless ``include_diverged`` (their draws after the divergence are NaN, which
        makes ArviZ's statistics NaN). The attributes hold λ̂, nβ, L_n(w*), n and hf_llc's own
        convergence statistics.

        ``arviz.rhat`` and ``arviz.ess`` (bulk, tail) of ``llc`` are the statistics hf_llc
        computes itself (``diagnostics["rhat_rank"]``, ``["ess_bulk"]``, ``["ess_tail"]``,
        the same definitions of Vehtari et al. 2021) when the result has no paired trace
        (``diagnostics["checks"]["trace"] == "loss"``): R̂ to machine precision, the ESS too
        unless the draws stay correlated over the whole chain, where the two cut the sum of
        autocorrelations at slightly different lags (docs/results.md). With the per-sample
        cache hf_llc's are of the paired excess, which the result does not store. Needs arviz
        (``pip install 'hf-llc[arviz]'``).

        Raises:
            ValueError: every chain diverged (and ``include_diverged`` is false).
        """
        az = _import_extra("arviz", "LLCResult.to_inference_data()")
        trace = self._trace_2d()
        chains, draws = trace.shape
        diverged = self._diverged_chains()
        keep = [c for c in range(chains) if include_diverged or c not in diverged]
        if not keep:
            raise ValueError(
                "every chain diverged: there are no draws to export (pass include_diverged=True "
                "for the NaN-padded traces)."
            )
        posterior = {"llc": self.llc_trace()[keep], "loss": trace[keep]}
        steps = self._step_sizes(chains)
        sample_stats = None
        if steps is not None:
            sample_stats = {"step_size": np.repeat(steps[keep, None], draws, axis=1)}
        diag = self.diagnostics or {}
        attrs = {
            "inference_library": "hf_llc",
            "inference_library_version": __version__,
            "llc_mean": self.llc_mean,
            "llc_std": self.llc_std,
            "nbeta": self.nbeta,
            "init_loss": self.init_loss,
            "num_samples": self.num_samples,
            **{f"hf_llc_{k}": diag.get(k) for k in ("rhat_rank", "ess_bulk", "ess_tail")},
        }
        attrs = {k: v for k, v in to_plain(attrs).items() if v is not None}
        return az.from_dict(
            posterior=posterior,
            sample_stats=sample_stats,
            coords={"chain": keep, "draw": np.arange(draws)},
            attrs=attrs,
        )

    def _trace_2d(self) -> np.ndarray:
        trace = np.asarray(self.loss_trace, dtype=np.float64)
        if trace.ndim != 2:
            trace = trace.reshape(len(self.llc_per_chain), -1)
        return trace

    def _diverged_chains(self) -> set[int]:
        return {
            d.get("chain")
            for d in (self.diagnostics or {}).get("divergences") or []
            if isinstance(d, Mapping)
        }

    def _step_sizes(self, chains: int) -> np.ndarray | None:
        steps = (self.diagnostics or {}).get("step_size_per_chain")
        if steps is None or len(steps) != chains:
            return None
        return np.array([np.nan if s is None else s for s in steps], dtype=np.float64)

    def plot(self, path: str | Path | None = None, *, title: str | None = None):
        """Trace and per-chain λ̂ figure (needs the ``plot`` extra); saved to ``path`` if given."""
        return plot_llc_result(self, path, title=title)

    @property
    def verdict(self) -> str | None:
        """``"ok"``, ``"warning"`` or ``"fail"``: whether to trust λ̂ (``None`` for results
        saved before verdicts existed). The reasons are in :attr:`verdict_reasons`."""
        return (self.diagnostics.get("verdict") or {}).get("verdict")

    @property
    def verdict_reasons(self) -> list[str]:
        """One line per problem found, each naming the fix to try (empty when ``ok``)."""
        return list((self.diagnostics.get("verdict") or {}).get("reasons") or [])

    def chain_table(self) -> str:
        """Per-chain diagnostics as text: λ̂_c, step size, MALA acceptance (when recorded),
        flatness, fraction of draws below L_n(w*) and status (diverged, restarted, or what the
        chain's own flatness and MALA acceptance say against one chain's limits:
        :func:`hf_llc.diagnostics.chain_notes`), then the rank-normalized R-hat
        and the bulk and tail ESS of the excess-loss draws across chains (Vehtari et al. 2021;
        "-" where they could not be computed or the result predates them)."""
        diag = self.diagnostics or {}
        checks = diag.get("checks") or {}
        steps = diag.get("step_size_per_chain") or []
        diverged = {d.get("chain"): d for d in diag.get("divergences") or []}
        restarted = {r.get("chain") for r in diag.get("retries") or []}
        healthy = [c for c in range(len(self.llc_per_chain)) if c not in diverged]
        per = {
            key: dict(zip(healthy, checks.get(key) or []))
            for key in ("flatness_per_chain", "fraction_below_init_per_chain")
        }
        mala = dict(zip(healthy, diag.get("mala_acceptance_per_chain") or []))
        head = ["chain", "λ̂_c", "step size", "MALA", "flatness", "below L_n(w*)", "status"]
        rows = []
        for c, value in enumerate(self.llc_per_chain):
            if c in diverged:
                status = f"diverged at step {diverged[c].get('step')}"
            else:
                notes = chain_notes(per["flatness_per_chain"].get(c), mala.get(c))
                status = ", ".join(["restarted", *notes] if c in restarted else notes) or "ok"
            rows.append(
                [
                    str(c),
                    _fmt(value),
                    _fmt(steps[c] if c < len(steps) else None, ".3g"),
                    _fmt(mala.get(c), ".3f"),
                    _fmt(per["flatness_per_chain"].get(c), "+.2f"),
                    _fmt(per["fraction_below_init_per_chain"].get(c), ".1%"),
                    status,
                ]
            )
        lines = table_lines(head, rows)
        lines.append(
            f"excess loss ({checks.get('trace', '-')} trace): rank-normalized R-hat "
            f"{_fmt(checks.get('rhat_rank'), '.3f')}, ESS bulk "
            f"{_fmt(checks.get('ess_bulk'), '.0f')} / tail {_fmt(checks.get('ess_tail'), '.0f')}, "
            f"mean flatness {_fmt(checks.get('flatness'), '+.2f')} "
            f"(limit ±{_fmt(checks.get('flatness_threshold'), '.2f')})"
        )
        return "\n".join(lines)

    def summary(self) -> str:
        """λ̂ ± std (stderr) with nβ and the chain count, the step-size robustness line when
        the result has one, then the verdict and its reasons."""
        line = (
            f"LLC = {self.llc_mean:.4g} ± {self.llc_std:.3g} (stderr {self.llc_stderr:.3g}, "
            f"{len(self.llc_per_chain)} chains, nβ = {self.nbeta:.4g}, n = {self.num_samples})"
        )
        report = (self.diagnostics or {}).get("robustness")
        if report:
            line += "\n" + _robustness_line(report)
        if self.verdict is None:
            return line
        return "\n".join(
            [f"{line}\nverdict: {self.verdict}", *(f"  {r}" for r in self.verdict_reasons)]
        )


def _robustness_line(report: Mapping[str, Any]) -> str:
    """One line of ``diagnostics["robustness"]``: λ̂ at ε and at ε/2 and the change."""
    (a, b), (sa, sb) = report["llc_means"], report["llc_stderrs"]
    eps = report.get("step_sizes") or [None, None]
    diff, rel = report.get("difference"), report.get("relative_change")
    number = isinstance(diff, (int, float)) and math.isfinite(diff)
    sign = ("+" if diff >= 0 else "-") if number else ""
    noise = "within noise" if report.get("within_noise") else "beyond noise"
    return (
        f"step-size robustness: λ̂ = {_fmt(a)} ± {_fmt(sa, '.3g')} at "
        f"ε = {_fmt(eps[0], '.3g')}, {_fmt(b)} ± {_fmt(sb, '.3g')} at ε/2 = "
        f"{_fmt(eps[1], '.3g')}: change {sign}{_fmt(rel, '.1%')} "
        f"({_fmt(report.get('noise_multiple'), '.1f')} combined stderr, {noise})"
    )


def _import_extra(name: str, what: str):
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(
            f"{what} needs {name}: pip install 'hf-llc[{name}]' (or pip install {name})."
        ) from err


@releases_run_locks  # the output_dir lock is released however the call ends
def estimate_llc(
    model: nn.Module,
    dataset: Any,
    config: SamplerConfig | None = None,
    *,
    loss_fn: Callable[[Any, Mapping[str, Any]], Tensor] | None = None,
    model_loss_fn: Callable[[nn.Module, Mapping[str, Any]], Tensor] | None = None,
    forward_kwargs: Mapping[str, Any] | None = None,
    collate_fn: Callable | None = None,
    tokenizer: Any = None,
    text_column: str | None = None,
    max_length: int | None = None,
    num_samples: int | None = None,
    drop_empty_rows: bool = True,
    block_size: int | None = None,
    dataset_description: Mapping[str, Any] | None = None,
    parameters: ParameterSelection | None = None,
    accelerator: Any = None,
    mixed_precision: str | None = None,
    progress: bool = True,
    output_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = 300.0,
) -> LLCResult:
    """Estimate the local learning coefficient λ̂(w*) of ``model`` at its current weights.

    Args:
        model: any ``torch.nn.Module`` / ``PreTrainedModel``. Its forward is called with the
            batch columns it accepts (``label``/``label_ids`` are renamed ``labels``) and must
            return an output with ``.loss``, unless ``loss_fn`` is given. All parameters with
            ``requires_grad=True`` are sampled; the others stay at w*.
        dataset: a ``datasets.Dataset`` (numeric fixed-shape columns are pre-collated into
            tensors), a dict of equal-length tensors, or any indexable dataset with
            ``collate_fn``. n = its length sets nβ = n / log n unless ``config.nbeta`` is given.
        config: :class:`SamplerConfig` (defaults if ``None``).
        loss_fn: ``loss_fn(outputs, batch) -> Tensor`` overriding ``outputs.loss``. Return one
            loss per sample (shape [batch]) to enable the per-sample cache at w* and the paired
            estimator; a scalar must be the batch mean.
        model_loss_fn: ``model_loss_fn(model, batch) -> Tensor`` for objectives that call the
            model themselves (several forward passes); the model is at the sampled weights.
        forward_kwargs: extra arguments for every forward call (causal LMs get
            ``use_cache=False`` unless given).
        collate_fn: builds a batch dict from a list of rows (slow path, for ragged data);
            skips the adapter's tokenization and padding.
        tokenizer, text_column, max_length: tokenize a raw-text column (truncating at
            ``max_length``); a ``text`` column is used by default for language models.
        num_samples: use the first N rows (required for an ``IterableDataset``); with
            ``drop_empty_rows``, the first N rows that have a target (rows are read until there
            are N), and with ``block_size``, N blocks.
        drop_empty_rows: drop the rows without a target before n is counted (default): rows
            of fewer than two tokens for a causal LM (nothing to predict), rows whose labels
            are all −100 for token classification, rows without a maskable token for a masked
            LM, rows without a token for sequence classification. n, and so nβ = n / log n,
            counts only rows that carry loss. The count is in
            ``result.diagnostics["data"]["rows_dropped_empty"]``. Rows are checked where
            hf_llc makes the columns (a ``datasets`` dataset of raw text or ``input_ids``, for
            those model kinds); not with ``collate_fn`` or a dict of tensors.
        block_size: causal LMs: concatenate the tokenized texts, in order, and cut them into
            samples of exactly this many tokens (the last incomplete block dropped), as
            transformers' language-modelling examples do; texts are not truncated (do not
            pass ``max_length`` too). Other model kinds: a ``ValueError``.
        dataset_description: fields of ``diagnostics["data"]["dataset"]`` (``name``,
            ``config``, ``split``, ``revision``) that override the ones read from the dataset
            (:func:`hf_llc.adapters.describe_dataset`), e.g. the Hub id it was loaded from.
        parameters: sample only these parameters (a weight-refined LLC): glob patterns over
            ``model.named_parameters()`` names (``"transformer.h.0.*"``; a list for several),
            attention heads ``"MODULE:head=I"`` (:func:`hf_llc.heads`: only that head's
            entries of the projection matrices), or a function ``(name, parameter) -> bool``;
            the others stay at w* throughout and every ``requires_grad`` is restored
            afterwards. Default: the parameters with ``requires_grad=True``. What was sampled
            is in ``diagnostics["parameters"]`` (names, count, and per partly sampled
            parameter its count of sampled entries; ``num_params`` is the count) — see
            :mod:`hf_llc.selection` and :mod:`hf_llc.attention_heads`.
        accelerator: an ``accelerate.Accelerator``; without one, ``accelerate launch`` /
            ``torchrun`` environments are detected. Chains are split over the processes (chain
            c on process c mod P), each on its process's device (the model is moved there),
            and gathered to every process; the result does not depend on P. The model and
            data are never ``prepare()``-d (see :mod:`hf_llc.distributed`).
        mixed_precision: ``"no"``, ``"bf16"`` (forward/backward under autocast, sampling
            state fp32) or ``"fp16"`` (run in fp32 instead, with a logged warning: see
            :func:`hf_llc.distributed.resolve_mixed_precision`); default: the accelerator's
            setting, else ``ACCELERATE_MIXED_PRECISION``.
        progress: show a progress bar (on the main process).
        output_dir: a folder for checkpoints and results (see :mod:`hf_llc.checkpoint`):
            every chain's full state is saved there periodically and when it finishes, the
            result goes to ``output_dir/result.json``, and SIGINT (Ctrl-C) or SIGTERM save
            the running chain, write ``partial_result.json`` (the finished chains) and raise
            :class:`~hf_llc.checkpoint.EstimateInterrupted` (a ``KeyboardInterrupt``).
            Chains run one after another per process. The run holds the folder's lock until
            it ends (a second run on it gets :class:`~hf_llc.checkpoint.OutputDirLocked`; a
            stale lock of a dead process is taken over with a logged warning), and with
            ``step_size="auto"`` the calibration is kept there too. ``None``: nothing is
            written.
        resume: continue the run saved in ``output_dir`` (same model, data and settings, else
            a ``ValueError`` says what differs): finished chains are loaded, running chains
            continue from their last snapshot, and the result is bit-identical to an
            uninterrupted run's (on the same hardware and software).
        checkpoint_every: also snapshot a running chain every this many steps (needs
            ``output_dir``).
        checkpoint_seconds: snapshot a running chain at least this often (wall-clock seconds;
            ``None``: only by ``checkpoint_every``, at chain ends and on signals). When a
            snapshot is taken never changes the result.

    Known model kinds (``*ForCausalLM``, ``*ForMaskedLM``, ``*ForTokenClassification``,
    ``*ForSequenceClassification``) get per-sample losses computed from the logits, token
    losses weighted so that L_n is the dataset's mean token loss (see :mod:`hf_llc.adapters`).

    A peft model (a ``PeftModel`` with a LoRA or other adapter, e.g. from
    :func:`hf_llc.load_checkpoint` on an adapter folder) is sampled like any model: only its
    parameters with ``requires_grad=True``, the adapter's, are sampled; the base model's
    frozen weights stay at w*. The adapter is described in ``diagnostics["adapter"]``
    (:func:`hf_llc.peft_support.adapter_info`; ``None`` for other models).

    Returns:
        :class:`LLCResult`. Chains that diverge are excluded from the mean and reported in
        ``diagnostics["divergences"]`` with their step and a suggestion, and each is logged
        as a warning on the ``hf_llc`` logger (see :func:`hf_llc.set_verbosity`). What
        became of the dataset's rows (read, dropped as empty, used: n) and the dataset's
        name, config, split and revision are in ``diagnostics["data"]``.
    """
    cfg = checked_config(config)
    with open_posterior(
        model,
        dataset,
        cfg,
        loss_fn=loss_fn,
        model_loss_fn=model_loss_fn,
        forward_kwargs=forward_kwargs,
        collate_fn=collate_fn,
        tokenizer=tokenizer,
        text_column=text_column,
        max_length=max_length,
        num_samples=num_samples,
        drop_empty_rows=drop_empty_rows,
        block_size=block_size,
        dataset_description=dataset_description,
        parameters=parameters,
        accelerator=accelerator,
        mixed_precision=mixed_precision,
        output_dir=output_dir,
        resume=resume,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
    ) as (run, posterior):
        chain_cfg, calibration = cfg, None
        if cfg.step_size == "auto":
            # Pilot chains choose ε (every process runs the same pilots, so all agree).
            calibration = calibrate_posterior(posterior, cfg, run)
            chain_cfg = replace(cfg, step_size=calibration.chosen_step_size)
        chains, chain_mode = _sample(posterior, cfg, chain_cfg, run, progress)
        # Once, after sampling (off the hot path), the same on every process: the curvature
        # the verdict's checks of the step and of the localization need.
        measured = _verdict_curvature(posterior, chain_cfg, chains)
        half = None
        if cfg.robustness:  # λ̂ again at half the step size (diagnostics["robustness"])
            half = _half_step_run(posterior, chain_cfg, chains, run, progress)

    result = _assemble(
        chains, chain_cfg, posterior, warn=run.procs.is_main, measured=measured, half=half
    )
    if calibration is not None:
        # The settings say "auto" (rerunning them reproduces this result); the ε used is here.
        result.config = cfg.to_dict()
        result.diagnostics["calibration"] = calibration.to_dict()
    result.diagnostics["num_processes"] = run.procs.num_processes
    result.diagnostics["mixed_precision"] = run.precision
    result.diagnostics["chain_mode"] = chain_mode
    if run.run_dir is not None:
        run.run_dir.write_result(result)
    return result


def _sample(
    posterior: Posterior,
    cfg: SamplerConfig,
    chain_cfg: SamplerConfig,
    run: RunContext,
    progress: bool,
) -> tuple[list[ChainResult], str]:
    """Run this process's chains at ``chain_cfg`` (``cfg`` with the step size chosen), with a
    progress bar on the main process when ``progress``, and gather every process's chains,
    ordered by chain index; also returns the chain mode used. On a stop signal the finished
    chains' partial result is written and ``EstimateInterrupted`` raised."""
    procs = run.procs
    mine = procs.my_chains(cfg.num_chains)
    bar = None
    if progress and procs.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine) * cfg.num_steps, desc="SGLD", unit="step")
    stopped = None
    try:
        chains, chain_mode = _run_chains(posterior, chain_cfg, mine, bar, run.run_dir, run.resume)
    except ChainStopped as stop:
        stopped = stop.signum
    finally:
        if bar is not None:
            bar.close()
    if stopped is not None:
        _interrupted(run.run_dir, stopped, cfg, posterior, procs)
    return sorted(procs.gather(chains), key=lambda ch: ch.chain), chain_mode


def _half_step_run(
    posterior: Posterior,
    chain_cfg: SamplerConfig,
    chains: list[ChainResult],
    run: RunContext,
    progress: bool,
) -> tuple[list[ChainResult], SamplerConfig, float] | None:
    """The robustness report's second run: the estimate's chains again at half their step size
    (:func:`_half_steps`), same seeds, over the same sampling time (:func:`_half_step_config`:
    twice the burn-in and the draws); not checkpointed (the output folder holds the estimate's
    chains only). Returns the chains, the settings of the first group of them and the
    wall-clock seconds; ``None`` when no chain has a finite step size to halve."""
    procs = run.procs
    steps = _half_steps(chain_cfg, chains)
    if steps is None:
        logger.warning("no chain has a finite step size to halve: no robustness report")
        return None
    mine = procs.my_chains(chain_cfg.num_chains)
    groups: dict[float, list[int]] = {}
    for c in mine:
        groups.setdefault(steps[c], []).append(c)
    base = _half_step_config(chain_cfg)
    configs = {eps: replace(base, step_size=eps) for eps in groups}
    bar = None
    if progress and procs.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine) * base.num_steps, desc="SGLD at ε/2", unit="step")
    start = time.perf_counter()
    done: list[ChainResult] = []
    try:
        for eps, group in groups.items():
            done += run_chains(posterior.local, configs[eps], group, progress=bar)[0]
    finally:
        if bar is not None:
            bar.close()
    half = sorted(procs.gather(done), key=lambda ch: ch.chain)
    first = configs[steps[half[0].chain]] if half else base
    return half, first, time.perf_counter() - start


def _half_step_config(chain_cfg: SamplerConfig) -> SamplerConfig:
    """The lengths of a half-step chain (each chain's fixed ε/2 is set on top): twice the
    burn-in and the draws, so that it samples the same stretch of Langevin time as the chain
    at ε (time = steps × step). λ̂(ε/2) − λ̂(ε) then measures the discretization alone: with
    the same step counts the half-step chain would have travelled half as far from w*, and a
    λ̂ still settling over the draws (a drift the verdict's flatness check reports on its own)
    would read as a dependence on ε."""
    return replace(
        chain_cfg,
        num_burnin=HALF_STEP_LENGTH * chain_cfg.num_burnin,
        num_draws=HALF_STEP_LENGTH * chain_cfg.num_draws,
        robustness=False,
    )


def _half_steps(chain_cfg: SamplerConfig, chains: list[ChainResult]) -> dict[int, float] | None:
    """Chain → its step size in the half-step run: ε_c/2, ε_c the fixed step chain c drew with
    (the configured or calibrated ε, the curvature rule's choice at the end of the burn-in, or
    the step of its last attempt after restarts). A chain without a finite ε_c (kept after
    diverging) gets the median of the others'; ``None`` if no chain has one."""
    eps = {ch.chain: float(ch.step_size) for ch in chains}
    finite = [e for e in eps.values() if math.isfinite(e) and e > 0]
    if not finite:
        return None
    fallback = float(np.median(finite))
    return {
        c: (eps[c] if math.isfinite(eps.get(c, math.nan)) and eps[c] > 0 else fallback) / 2
        for c in range(chain_cfg.num_chains)
    }


def _robustness(
    result: LLCResult,
    cfg: SamplerConfig,
    posterior: Posterior,
    half: tuple[list[ChainResult], SamplerConfig, float],
) -> dict:
    """``diagnostics["robustness"]`` of ``result`` (the chains of ``cfg``) and the half-step
    run ``half`` (:func:`_half_step_run`); see :func:`hf_llc.diagnostics.robustness_report`.
    ``step_sizes`` are the mean over the chains of the step each drew with, ε and exactly ε/2
    (``step_size_per_chain`` has every chain's)."""
    half_chains, half_cfg, seconds = half
    other = _assemble(half_chains, half_cfg, posterior, warn=False)
    runs = (result, other)
    per_chain = [[float(e) for e in r.diagnostics["step_size_per_chain"]] for r in runs]
    result.timings["robustness_seconds"] = seconds
    return robustness_report(
        llc_means=[r.llc_mean for r in runs],
        llc_stderrs=[r.llc_stderr for r in runs],
        step_sizes=[float(np.nanmean(p)) if p else float("nan") for p in per_chain],
        step_rule="curvature" if cfg.step_size == "curvature" else "fixed",
        step_size_per_chain=per_chain,
        llc_per_chain=[list(r.llc_per_chain) for r in runs],
        num_divergences=[len(r.diagnostics["divergences"]) for r in runs],
        num_burnin=[cfg.num_burnin, half_cfg.num_burnin],
        num_draws=[cfg.num_draws, half_cfg.num_draws],
        half_step_verdict=other.verdict,
        sampling_seconds=[r.timings["sampling_seconds"] for r in runs],
        seconds=seconds,
    )


def _run_chains(
    posterior: Posterior,
    chain_cfg: SamplerConfig,
    mine: list[int],
    bar: Any,
    run_dir: RunCheckpoint | None,
    resume: bool,
) -> tuple[list[ChainResult], str]:
    """The chains ``mine`` of the posterior (see :func:`hf_llc.sampling.run_chains`).

    With an output folder, chains finished earlier are loaded, running ones resumed, and every
    chain checkpointed (batched ones too); SIGINT/SIGTERM stop it with ``ChainStopped``.
    """
    with run_dir.catch_signals() if run_dir is not None else nullcontext():
        chains, chain_mode = run_chains(
            posterior.local, chain_cfg, mine, progress=bar, store=run_dir, resume=resume
        )
    return chains, chain_mode


def _interrupted(
    run_dir: RunCheckpoint,
    signum: int,
    cfg: SamplerConfig,
    posterior: Posterior,
    procs: ProcessInfo,
) -> None:
    """After a stop signal: write the partial result and raise ``EstimateInterrupted``."""
    finished = run_dir.finished_results(cfg.num_chains)
    partial = None
    if procs.is_main:
        partial = _assemble(finished, cfg, posterior, warn=False)
        partial.diagnostics["partial"] = {
            "finished_chains": [ch.chain for ch in finished],
            "num_chains": cfg.num_chains,
        }
        run_dir.write_partial(partial)
    name = signal.Signals(signum).name
    raise EstimateInterrupted(
        f"{name} received: the run is saved in {run_dir.dir} ({len(finished)} of "
        f"{cfg.num_chains} chains finished, their result in {run_dir.dir / PARTIAL_RESULT}). "
        f"Continue it with estimate_llc(..., output_dir={str(run_dir.dir)!r}, resume=True) "
        f"or `hf-llc estimate ... --output-dir {run_dir.dir} --resume`.",
        signum=signum,
        output_dir=run_dir.dir,
        finished_chains=[ch.chain for ch in finished],
        partial_result=partial,
    )


def _metrics(chains: list[ChainResult], cfg: SamplerConfig, warn: bool) -> np.ndarray | None:
    """The chains' localizer metrics as a (chains × d) array, with ``record_metric``; ``None``
    when it is off, the localizer is Euclidean, or a chain finished before it was turned on
    (a resumed run: said once)."""
    if not cfg.record_metric or not chains:
        return None
    rows = [ch.metric for ch in chains]
    if all(m is None for m in rows):
        return None
    if any(m is None for m in rows):
        if warn:
            logger.warning(
                "record_metric: chain(s) %s finished before it was on (a resumed run); "
                "result.localizer_metric is None.",
                [ch.chain for ch, m in zip(chains, rows) if m is None],
            )
        return None
    return torch.stack([m.to(torch.float64) for m in rows]).numpy()


def _assemble(
    chains: list[ChainResult],
    cfg: SamplerConfig,
    posterior: Posterior,
    *,
    warn: bool = True,
    measured: dict | None = None,
    half: tuple[list[ChainResult], SamplerConfig, float] | None = None,
) -> LLCResult:
    """The result of finished chains. ``measured``: :func:`_verdict_curvature`'s numbers for
    the verdict's checks of the step and the localization (skipped when ``None``). ``half``:
    the half-step run of the robustness report (:func:`_half_step_run`), or ``None``."""
    nbeta, init_loss, n = posterior.nbeta, posterior.init_loss, posterior.num_samples
    trace, per_chain, paired, divergences = _chain_estimates(chains, cfg, nbeta, init_loss)
    healthy = [i for i, ch in enumerate(chains) if not ch.diverged]
    mean, std, stderr = _mean_std_stderr(np.array([per_chain[i] for i in healthy]))
    for ch in chains if warn else []:
        for r in ch.retries[: len(ch.retries) - ch.diverged]:
            logger.warning("%s; restarted it from w* with half the step size", r["message"])
    for d in divergences if warn else []:
        logger.warning("%s", d["message"])
    if not healthy and warn:
        logger.warning(
            "every chain diverged: the estimate is NaN; reduce step_size (or step_scale)."
        )

    result = LLCResult(
        llc_mean=mean,
        llc_std=std,
        llc_stderr=stderr,
        llc_per_chain=per_chain,
        loss_trace=trace,
        init_loss=init_loss,
        nbeta=nbeta,
        num_samples=n,
        num_params=posterior.num_params,
        config=cfg.to_dict(),
        diagnostics={
            **_sampler_diagnostics(chains, cfg, divergences),
            "data": copy.deepcopy(posterior.data_info),
            "adapter": adapter_info(posterior.problem.model),
            "parameters": copy.deepcopy(posterior.selection),
        },
        timings={
            "init_loss_seconds": posterior.init_seconds,
            "sampling_seconds": sum(ch.seconds for ch in chains),
            "chain_seconds": [ch.seconds for ch in chains],
        },
    )
    result.localizer_metric = _metrics(chains, cfg, warn)
    if chains and chains[0].init_batch_trace is not None:
        good_paired = np.array([p for p, ch in zip(paired, chains) if not ch.diverged])
        result.llc_paired_per_chain = paired
        result.llc_paired_mean, result.llc_paired_std, _ = _mean_std_stderr(good_paired)
    settings = {
        "num_chains": cfg.num_chains,
        "num_draws": cfg.num_draws,
        "num_burnin": cfg.num_burnin,
        "num_steps": cfg.num_steps,
        "nbeta": nbeta,
        "num_samples": n,
        **(measured or {}),
    }
    if half is not None:
        result.diagnostics["robustness"] = _robustness(result, cfg, posterior, half)
    _add_verdict(result, chains, nbeta, init_loss, settings)
    return result


def _chain_estimates(
    chains: list[ChainResult], cfg: SamplerConfig, nbeta: float, init_loss: float
) -> tuple[np.ndarray, list[float], list[float], list[dict]]:
    """Per chain: the loss trace (a row of chains × ``cfg.num_draws``, NaN-padded), λ̂_c =
    nβ·(mean_t L_{B_t}(w_t) − L_n(w*)) and the paired nβ·mean_t(L_{B_t}(w_t) − L_{B_t}(w*))
    (NaN for a diverged chain; absent without the per-sample cache); and the divergences."""
    trace = np.full((len(chains), cfg.num_draws), np.nan)
    per_chain, paired = [], []
    divergences = []
    for i, ch in enumerate(chains):
        lt = ch.loss_trace.numpy()
        trace[i, : len(lt)] = lt
        if ch.diverged:
            divergences.append(
                {"chain": ch.chain, "step": ch.divergence_step, "message": ch.divergence_reason}
            )
            per_chain.append(float("nan"))
            paired.append(float("nan"))
            continue
        per_chain.append(nbeta * (float(lt.mean()) - init_loss))
        if ch.init_batch_trace is not None:
            paired.append(nbeta * float((ch.loss_trace - ch.init_batch_trace).mean()))
    return trace, per_chain, paired, divergences


def _sampler_diagnostics(
    chains: list[ChainResult], cfg: SamplerConfig, divergences: list[dict]
) -> dict[str, Any]:
    """The sampler's records of the chains: divergences, restarts, step sizes, burn-in traces
    and, with MALA, the mean acceptance per healthy chain and over them."""
    healthy = [ch for ch in chains if not ch.diverged]
    diagnostics: dict[str, Any] = {
        "num_chains_used": len(healthy),
        "divergences": divergences,
        "retries": [r | {"chain": ch.chain} for ch in chains for r in ch.retries],
        "step_size_per_chain": [ch.step_size for ch in chains],
        "step_size_history": [ch.step_size_history for ch in chains],
        "burnin_trace": [ch.burnin_trace.numpy() for ch in chains],
    }
    if cfg.mala:
        acc = [float(ch.mala_acceptance.mean()) for ch in healthy if len(ch.mala_acceptance)]
        diagnostics["mala_acceptance_per_chain"] = acc
        diagnostics["mala_acceptance"] = float(np.mean(acc)) if acc else float("nan")
    return diagnostics


def _verdict_curvature(
    posterior: Posterior, cfg: SamplerConfig, chains: list[ChainResult]
) -> dict[str, Any]:
    """The curvature numbers the verdict checks (off the hot path: once, after sampling).

    - ``step_times_curvature`` = ε·λ_max(A·∇²U), U = nβ·L + (γ/2)‖w − w*‖²; see
      :func:`_step_times_curvature`.
    - ``localization_ratio`` = γ / (nβ·λ_max(∇²L)); see :func:`_localization_ratio`.

    A measurement that fails (or is not finite) is ``None``; the verdict then says that the
    check could not be made.
    """
    probe = _CurvatureProbe(posterior, cfg)
    healthy = [ch for ch in chains if not ch.diverged]
    out: dict[str, Any] = _step_times_curvature(probe, posterior, cfg, healthy)
    out["localization_ratio"] = _localization_ratio(probe, posterior, cfg)
    return out


class _CurvatureProbe:
    """λ_max by power iteration (:func:`hf_llc.sampling.chain.max_curvature`) on one fixed
    minibatch, with Gaussian draws from a generator seeded with ``cfg.seed``."""

    def __init__(self, posterior: Posterior, cfg: SamplerConfig):
        self.problem = posterior.problem
        self.w_star = w_star = posterior.w_star
        self.iters = cfg.curvature_iters
        self.gen = torch.Generator(device=w_star.device)
        self.gen.manual_seed(int(cfg.seed))
        cpu_gen = torch.Generator().manual_seed(int(cfg.seed))
        order = torch.randperm(self.problem.num_samples, generator=cpu_gen)
        self.batch = self.problem.batch(order[: cfg.batch_size])

    def noise(self) -> Tensor:
        """ξ ~ N(0, I) shaped like w*."""
        w = self.w_star
        return torch.randn(w.shape, generator=self.gen, device=w.device, dtype=w.dtype)

    def largest(
        self, points: list[Tensor], *, nbeta: float, loc: float, precond_sqrt: Tensor | None
    ) -> float | None:
        """The largest λ_max(√A·∇²U·√A) over ``points`` (U with ``nbeta`` and γ = ``loc``);
        ``None`` when a measurement fails or is not finite."""
        best = 0.0
        try:
            for w in points:
                lam, _ = max_curvature(
                    self.problem,
                    w,
                    self.w_star,
                    self.batch,
                    nbeta=nbeta,
                    localization=loc,
                    precond_sqrt=precond_sqrt,
                    v0=self.noise(),
                    iters=self.iters,
                )
                best = max(best, lam)
        except (RuntimeError, ValueError):
            return None
        return best if math.isfinite(best) else None


def _step_times_curvature(
    probe: _CurvatureProbe, posterior: Posterior, cfg: SamplerConfig, healthy: list[ChainResult]
) -> dict[str, Any]:
    """ε·λ_max(A·∇²U) and where it comes from (``curvature_source``).

    With ``step_size="curvature"`` the sampler measured λ_max itself and set ε = c/λ_max, so it
    is ``step_scale`` × 2⁻ᵏ after k restarts (the smallest over the healthy chains). With a
    fixed ε it is measured on one minibatch, the larger of the values at w* and at w* + σ·ξ,
    σ = min(√(T·ε·A), 1/√γ) the farthest a chain could have diffused in T steps: at a singular
    w* (the origin of a deep linear network, where ∇²L = 0) the curvature the chain meets is
    away from w*. A is the user's diagonal; for RMSProp, whose A is learned per chain and not
    kept, A ≈ 1 (its normalisation, mean(A) = 1), and for the Fisher diagonal A ≈ 1/nβ (the
    flat start's value before the first window: unit curvature of L; the default's curvature
    start differs per tensor, so this is an approximation there too).
    """
    if cfg.step_size == "curvature":
        attempts = [len(ch.retries) for ch in healthy] or [0]
        return {
            "step_times_curvature": cfg.step_scale * 0.5 ** max(attempts),
            "curvature_source": "sampler",
        }
    w_star, nbeta, gamma = posterior.w_star, posterior.nbeta, float(cfg.localization)
    eps = min([ch.step_size for ch in healthy] or [float(cfg.step_size)])
    precond_diag = posterior.precond_diagonal
    sqrt_a = precond_diag.sqrt() if precond_diag is not None else None
    fisher = str(cfg.preconditioner).startswith("fisher")
    if fisher:
        sqrt_a = torch.full_like(w_star, 1 / math.sqrt(nbeta))
    reach = math.sqrt(cfg.num_steps * eps)
    sigma = (sqrt_a * reach) if sqrt_a is not None else torch.full_like(w_star, reach)
    if gamma > 0:
        sigma = sigma.clamp(max=1 / math.sqrt(gamma))
    points = [w_star, w_star + sigma * probe.noise()]
    lam = probe.largest(points, nbeta=nbeta, loc=gamma, precond_sqrt=sqrt_a)
    source = (
        "measured, A≈1/nβ"
        if fisher
        else "measured, A≈1"
        if str(cfg.preconditioner).startswith("rmsprop")
        else "measured"
    )
    return {
        "step_times_curvature": None if lam is None else eps * lam,
        "curvature_source": source,
    }


def _localization_ratio(
    probe: _CurvatureProbe, posterior: Posterior, cfg: SamplerConfig
) -> float | None:
    """γ / (nβ·λ_max(∇²L)), λ_max the larger of the values at w* and at w* + ξ/√γ, the scale
    the localizer alone would allow: if even there nβ·curvature does not exceed γ, the
    localizer sets the posterior's scale in every direction. 0 for γ = 0. With
    ``"fisher-burnin"`` the localizer's metric is M = A⁻¹/nβ ≈ the curvature diagonal of L, so
    in every direction it is γ/nβ of nβ times the curvature: the ratio is γ/nβ, unmeasured.
    """
    gamma, nbeta, w_star = float(cfg.localization), posterior.nbeta, posterior.w_star
    if gamma > 0 and str(cfg.preconditioner).startswith("fisher"):
        return gamma / nbeta
    if gamma <= 0:
        return 0.0
    points = [w_star, w_star + probe.noise() / math.sqrt(gamma)]
    lam = probe.largest(points, nbeta=1.0, loc=0.0, precond_sqrt=None)
    return None if lam is None else (gamma / (nbeta * lam) if lam > 0 else math.inf)


def _add_verdict(
    result: LLCResult, chains, nbeta: float, init_loss: float, settings: dict | None = None
) -> None:
    """Trace checks and the ok/warning/fail verdict into ``result.diagnostics``.

    The checks run on the excess loss of the chains that did not diverge: the paired
    nβ·(L_{B_t}(w_t) − L_{B_t}(w*)) when the per-sample cache exists, else nβ·(L_{B_t}(w_t) −
    L_n(w*)) (see :func:`hf_llc.diagnostics.assess_estimate`). ``settings`` (the numbers of
    the run the settings checks read) is stored as ``diagnostics["settings"]``; the
    convergence statistics are copied to ``diagnostics["rhat_rank"]``, ``["ess_bulk"]`` and
    ``["ess_tail"]``.
    """
    healthy = [ch for ch in chains if not ch.diverged]
    paired = bool(healthy) and all(ch.init_batch_trace is not None for ch in healthy)
    rows = [
        nbeta * (ch.loss_trace.numpy() - (ch.init_batch_trace.numpy() if paired else init_loss))
        for ch in healthy
    ]
    excess = np.array(rows) if rows else np.empty((0, 0))
    diag = result.diagnostics
    diag["checks"] = trace_checks(excess, paired=paired)
    for key in ("rhat_rank", "ess_bulk", "ess_tail"):
        diag[key] = diag["checks"][key]
    if settings is not None:
        diag["settings"] = settings
    diag["verdict"] = assess_estimate(
        llc_mean=result.llc_mean,
        llc_stderr=result.llc_stderr,
        num_chains=len(chains),
        checks=diag["checks"],
        divergences=diag["divergences"],
        retries=diag["retries"],
        mala_acceptance_per_chain=diag.get("mala_acceptance_per_chain"),
        settings=settings,
        robustness=diag.get("robustness"),
    )


def _mean_std_stderr(values: np.ndarray) -> tuple[float, float, float]:
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return mean, std, std / math.sqrt(len(values))

r"""``estimate_llc``: the local learning coefficient of a model at its current weights w*.

Definitions (Lau et al., arXiv 2308.12108; Furman & Lau, arXiv 2402.03698):

- L_n(w): mean per-sample loss over the n samples of the dataset.
- Localized tempered posterior p(w) ∝ exp(−nβ·L_n(w) − (γ/2)·‖w − w*‖²), nβ = n / log n by
  default (n = dataset size, never the batch size).
- Per chain c: λ̂_c = nβ·(mean over draws t of L_{B_t}(w_t) − L_n(w*)); λ̂ = mean over chains,
  with the standard deviation and standard error across chains.
- When the loss returns per-sample values, the losses at w* are cached (n floats): L_n(w*) is
  exact and the paired estimator nβ·mean_t(L_{B_t}(w_t) − L_{B_t}(w*)) is reported as well.

The model's weights are never written: each chain samples a flat fp32 copy of the parameters,
whose views stand in for the model's parameters while the loss is evaluated and are swapped
back afterwards, so the weights are exactly w* after the call, error or not.
"""

from __future__ import annotations

import inspect
import json
import math
import signal
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import checks
from ._text import fmt as _fmt
from ._text import table_lines
from .adapters import LABEL_ALIASES, default_loss_fn, model_kind, prepare_dataset
from .checkpoint import FORMAT_VERSION as CHECKPOINT_FORMAT
from .checkpoint import (
    PARTIAL_RESULT,
    ChainStopped,
    EstimateInterrupted,
    RunCheckpoint,
    releases_run_locks,
    tensor_sha256,
)
from .diagnostics import assess_estimate, trace_checks
from .distributed import autocast, process_info, resolve_mixed_precision
from .sampling import LocalPosterior, SamplerConfig, run_chains
from .serialization import settings_hash, to_plain, write_json


class FlatParameters:
    """The sampled parameters of a module as one flat fp32 vector, and views back into it."""

    def __init__(self, model: nn.Module):
        self.names: list[str] = []
        self.shapes: list[torch.Size] = []
        self.dtypes: list[torch.dtype] = []
        self.offsets: list[int] = []
        self.params: list[nn.Parameter] = []
        flats = []
        offset = 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            self.names.append(name)
            self.params.append(p)
            self.shapes.append(p.shape)
            self.dtypes.append(p.dtype)
            self.offsets.append(offset)
            offset += p.numel()
            flats.append(p.detach().reshape(-1).to(torch.float32))
        if not flats:
            raise ValueError(
                "the model has no trainable parameters (requires_grad=True) to sample."
            )
        self.numel = offset
        self.sizes = [shape.numel() for shape in self.shapes]
        self.w_star = torch.cat(flats)

    def views(self, w: Tensor) -> dict[str, Tensor]:
        """name → view of ``w`` shaped (and cast) like the parameter; differentiable."""
        # One split (its backward is one concatenation into the flat gradient) rather than a
        # slice per parameter (whose backward scatters each piece into a zero-filled copy).
        pieces = torch.split(w, self.sizes)
        out = {}
        for name, shape, dtype, t in zip(self.names, self.shapes, self.dtypes, pieces):
            t = t.view(shape)
            out[name] = t if dtype == torch.float32 else t.to(dtype)
        return out

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Flatten a dict shaped like the parameters (e.g. a preconditioner diagonal)."""
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise ValueError(f"preconditioner is missing entries for parameters {missing[:5]}.")
        return torch.cat([tensors[n].reshape(-1).to(torch.float32) for n in self.names])


class TensorBatches:
    """A dataset held as column tensors; a minibatch is one indexing op per column.

    Accepts a ``datasets.Dataset`` (numeric columns of fixed shape), a mapping of equal-length
    tensors, or, with ``collate_fn``, any indexable dataset (collated per batch, slower).
    """

    def __init__(self, dataset: Any, device: torch.device, collate_fn: Callable | None = None):
        self.device = device
        self.collate_fn = collate_fn
        self.columns: dict[str, Tensor] | None = None
        self.dataset = dataset
        # Columns left out (text, ragged rows, ...): name → why, for the "missing" errors.
        self.dropped: dict[str, str] = {}
        checks.check_label_columns(
            dataset if isinstance(dataset, Mapping) else getattr(dataset, "column_names", ())
        )
        if isinstance(dataset, Mapping):
            self.columns = {k: torch.as_tensor(v) for k, v in dataset.items()}
            lengths = {len(v) for v in self.columns.values()}
            if len(lengths) > 1:
                raise ValueError(f"dataset columns have different lengths {sorted(lengths)}.")
            self.num_samples = lengths.pop() if lengths else 0
        else:
            try:
                self.num_samples = len(dataset)
            except TypeError as err:
                raise ValueError(
                    "dataset must have a length (a map-style datasets.Dataset or a dict of "
                    "tensors)."
                ) from err
            if collate_fn is None and self.num_samples:
                self.columns = _columns_from_dataset(dataset, self.dropped)
        if self.num_samples == 0:
            raise ValueError("dataset is empty: the LLC needs at least one sample.")
        if self.columns is not None:
            self.columns = {LABEL_ALIASES.get(k, k): v.to(device) for k, v in self.columns.items()}

    def batch(self, indices: Tensor) -> dict[str, Any]:
        if self.columns is not None:
            idx = indices.to(self.device)
            return {k: v.index_select(0, idx) for k, v in self.columns.items()}
        rows = [self.dataset[i] for i in indices.tolist()]
        out = self.collate_fn(rows)
        out = {LABEL_ALIASES.get(k, k): v for k, v in dict(out).items()}
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in out.items()}


def _columns_from_dataset(dataset: Any, dropped: dict[str, str] | None = None) -> dict[str, Tensor]:
    """Numeric fixed-shape columns as tensors; the others are recorded in ``dropped``
    (name → why) when given."""
    dropped = {} if dropped is None else dropped
    if not hasattr(dataset, "with_format"):
        raise ValueError(
            "dataset is not a datasets.Dataset or dict of tensors; pass collate_fn to batch it."
        )
    columns = {}
    formatted = dataset.with_format("torch")
    for name in dataset.column_names:
        value = formatted[name]
        if isinstance(value, Tensor):
            columns[name] = value
        elif hasattr(value, "__getitem__") and not isinstance(value, (list, str)):
            try:
                columns[name] = torch.as_tensor(value[:])
            except (TypeError, ValueError, RuntimeError):
                dropped[name] = checks.why_not_a_tensor(dataset[name])
                continue
        else:
            dropped[name] = checks.why_not_a_tensor(dataset[name])
    if not columns:
        kinds = "; ".join(f"{k!r} holds {v}" for k, v in dropped.items())
        raise ValueError(
            "dataset has no numeric columns of fixed shape"
            + (f" ({kinds})" if kinds else "")
            + "; tokenize/pad it or pass collate_fn."
        )
    return columns


class ModelLoss:
    """loss(w, batch): the model's loss with its sampled parameters set to flat vector w.

    The parameters are swapped in place on the module (by identity, so tied parameters stay
    tied) and swapped back afterwards; nothing else about the model changes. Returns
    per-sample losses (1-D) when the loss function does, else the batch mean (0-d).

    Args:
        loss_fn: ``loss_fn(outputs, batch)`` instead of ``outputs.loss``.
        model_loss_fn: ``model_loss_fn(model, batch)`` for objectives that call the model
            themselves (several forward passes); called with the model at the sampled weights.
        forward_kwargs: extra keyword arguments for every forward call (``use_cache=False``…).
        exclude: batch columns never passed to ``forward`` (e.g. ``labels`` when the loss is
            computed from the logits, so the model does not compute it a second time).
    """

    def __init__(
        self,
        model: nn.Module,
        flat: FlatParameters,
        data: TensorBatches,
        loss_fn: Callable | None,
        *,
        model_loss_fn: Callable | None = None,
        forward_kwargs: Mapping[str, Any] | None = None,
        exclude: frozenset[str] = frozenset(),
        autocast: Callable[[], Any] = nullcontext,
    ):
        self.model = model
        self.autocast = autocast
        self.flat = flat
        self.data = data
        self.loss_fn = loss_fn
        self.model_loss_fn = model_loss_fn
        self.forward_kwargs = dict(forward_kwargs or {})
        self.exclude = set(exclude) | {"num_items_in_batch"}
        self.num_samples = data.num_samples
        # The parameter tensors' sizes in the flat vector (none for check_inputs' stand-in).
        self.segments = getattr(flat, "sizes", None)
        params = inspect.signature(model.forward).parameters
        self.accepts_all = any(p.kind is p.VAR_KEYWORD for p in params.values()) and not [
            n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        self.forward_names = set(params)
        index = {id(p): i for i, p in enumerate(flat.params)}
        self._places: list[list[tuple[nn.Module, str]]] = [[] for _ in flat.params]
        for module in model.modules():
            for name, p in module._parameters.items():
                if p is not None and id(p) in index:
                    self._places[index[id(p)]].append((module, name))

    def batch(self, indices: Tensor) -> dict[str, Any]:
        return self.data.batch(indices)

    def _forward_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        if self.accepts_all:
            out = {k: v for k, v in batch.items() if k not in self.exclude}
        else:
            out = {
                k: v for k, v in batch.items() if k in self.forward_names and k not in self.exclude
            }
        out.update(self.forward_kwargs)
        return out

    def compile(self) -> None:
        """``torch.compile`` the forward and loss of the hot path (:meth:`bind`'s step);
        :meth:`loss` (curvature estimates need its double backward) stays eager. Idempotent."""
        if getattr(self, "_compiled_evaluate", None) is None:
            self._compiled_evaluate = torch.compile(self.evaluate, dynamic=False)

    def evaluate(self, batch: Mapping[str, Any]) -> Tensor:
        """The loss of the model as its parameters are now (fp32)."""
        with self.autocast():
            if self.model_loss_fn is not None:
                out = self.model_loss_fn(self.model, batch)
            else:
                out = self.outputs_to_loss(self.model(**self._forward_inputs(batch)), batch)
        if not isinstance(out, Tensor):
            raise ValueError(
                f"the loss must be a tensor (scalar or one value per sample), got {type(out)}."
            )
        return out.float()

    def outputs_to_loss(self, outputs: Any, batch: Mapping[str, Any]) -> Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(outputs, batch)
        loss = getattr(outputs, "loss", None)
        if loss is None and isinstance(outputs, Mapping):
            loss = outputs.get("loss")
        if loss is None:
            raise ValueError(
                f"{type(self.model).__name__}'s forward returned no loss for a batch with "
                f"columns {sorted(batch)}: pass loss_fn=lambda outputs, batch: ... (or include "
                "the labels the model needs)."
            )
        return loss

    @contextmanager
    def _swapped(self, tensors: list[Tensor]):
        """Put ``tensors`` (one per sampled parameter) where the parameters are.

        The places (module, attribute) are found once, by the parameters' identity, so tied
        parameters get the same tensor, and a swap nested inside another still finds them.
        """
        saved = []
        try:
            for places, tensor in zip(self._places, tensors):
                for module, name in places:
                    saved.append((module, name, module._parameters[name]))
                    module._parameters[name] = tensor
            yield
        finally:
            for module, name, previous in reversed(saved):
                module._parameters[name] = previous

    @contextmanager
    def bind(self, w: Tensor):
        """Hot-path evaluation at the chain's own buffer ``w``: yields ``step(batch)``.

        For the duration of the context the model's sampled parameters are ``nn.Parameter``
        views of ``w``, each with ``.grad`` a view of one flat gradient buffer; the originals
        are put back on exit. A step is then a plain forward and backward, as in training, and
        ``step(batch)`` returns (per-sample or mean loss, mean loss, flat gradient). Models
        with non-fp32 parameters get ``None`` and use :meth:`loss`.
        """
        if w.dtype != torch.float32 or any(d != torch.float32 for d in self.flat.dtypes):
            yield None
            return
        grad = torch.zeros_like(w)
        leaves = []
        for off, shape in zip(self.flat.offsets, self.flat.shapes):
            n = shape.numel()
            leaf = nn.Parameter(w[off : off + n].view(shape))
            leaf.grad = grad[off : off + n].view(shape)
            leaves.append(leaf)

        evaluate = getattr(self, "_compiled_evaluate", None) or self.evaluate

        def step(batch: Mapping[str, Any]):
            grad.zero_()
            per = evaluate(batch)
            loss = per.mean() if per.ndim else per
            torch.autograd.backward(loss, inputs=leaves)
            return per, loss, grad

        with self._swapped(leaves):
            yield step

    def loss(self, w: Tensor, batch: Mapping[str, Any]) -> Tensor:
        """The loss at flat parameters ``w`` (differentiable with respect to ``w``)."""
        with self._swapped(list(self.flat.views(w).values())):
            return self.evaluate(batch)

    @torch.no_grad()
    def init_loss(self, num_samples: int, batch_size: int) -> tuple[float, Tensor | None]:
        """L_n(w*) over the first ``num_samples`` samples, with per-sample losses if available."""
        total, count, pieces = 0.0, 0, []
        per_sample_ok = True
        for start in range(0, num_samples, batch_size):
            idx = torch.arange(start, min(start + batch_size, num_samples))
            batch = self.batch(idx)
            value = self.evaluate(batch).detach().double()
            if value.ndim == 1 and value.numel() == len(idx):
                pieces.append(value)
                total += float(value.sum())
            elif value.ndim == 0:
                per_sample_ok = False
                total += float(value) * len(idx)
            else:
                raise ValueError(
                    f"loss_fn must return a scalar or one loss per sample (shape [{len(idx)}]), "
                    f"got shape {tuple(value.shape)}."
                )
            count += len(idx)
        if not math.isfinite(total):
            raise ValueError(
                "the loss at the given weights is not finite (NaN or inf in the data or weights?)."
            )
        cache = torch.cat(pieces) if per_sample_ok and pieces else None
        return total / count, cache


@dataclass
class LLCResult:
    """An LLC estimate with its settings, traces and diagnostics.

    ``llc_mean``/``llc_std``/``llc_stderr`` summarise ``llc_per_chain`` over the chains that
    did not diverge. ``loss_trace`` is (chains × draws) of L_{B_t}(w_t), NaN-padded where a
    chain stopped early. ``llc_paired_*`` are the paired estimator's values when per-sample
    losses were available (else ``None``). :attr:`verdict` (``"ok"``, ``"warning"``,
    ``"fail"``) and :attr:`verdict_reasons` say whether to trust λ̂; the checks behind them are
    in ``diagnostics["checks"]``, and with ``step_size="auto"`` the step-size sweep is in
    ``diagnostics["calibration"]``.
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

    def to_dict(self) -> dict:
        """JSON-ready dict of plain floats and lists (missing values are ``None``)."""
        out = {}
        for key in self.__dataclass_fields__:
            out[key] = to_plain(getattr(self, key))
        return out

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON (atomically: a temporary file renamed into place)."""
        return write_json(path, self.to_dict(), make_parents=True)

    @classmethod
    def from_dict(cls, data: dict) -> LLCResult:
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
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def load(cls, path: str | Path) -> LLCResult:
        """Read a result written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def plot(self, path: str | Path | None = None, *, title: str | None = None):
        """Trace and per-chain λ̂ figure (needs the ``plot`` extra); saved to ``path`` if given."""
        from .plotting import plot_llc_result

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
        flatness, fraction of draws below L_n(w*) and status, then the rank-normalized R-hat
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
            elif c in restarted:
                status = "restarted"
            else:
                status = "ok"
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
        """λ̂ ± std (stderr) with nβ and the chain count, then the verdict and its reasons."""
        line = (
            f"LLC = {self.llc_mean:.4g} ± {self.llc_std:.3g} (stderr {self.llc_stderr:.3g}, "
            f"{len(self.llc_per_chain)} chains, nβ = {self.nbeta:.4g}, n = {self.num_samples})"
        )
        if self.verdict is None:
            return line
        return "\n".join(
            [f"{line}\nverdict: {self.verdict}", *(f"  {r}" for r in self.verdict_reasons)]
        )


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _prepare_data(
    model: nn.Module,
    dataset: Any,
    cfg: SamplerConfig,
    device: torch.device,
    *,
    loss_fn: Callable | None,
    model_loss_fn: Callable | None,
    forward_kwargs: Mapping[str, Any] | None,
    collate_fn: Callable | None,
    tokenizer: Any,
    text_column: str | None,
    max_length: int | None,
    num_samples: int | None,
) -> tuple[TensorBatches, Callable | None, Mapping[str, Any] | None, frozenset[str]]:
    """Prepare the data (see :mod:`hf_llc.adapters`) and check it against the model, once,
    before any loss is computed: (batches, loss_fn, forward_kwargs, columns kept from forward).
    """
    exclude: frozenset[str] = frozenset()
    dropped: dict[str, str] = {}
    kind = model_kind(model)
    if collate_fn is None:
        prepared = prepare_dataset(
            model,
            dataset,
            tokenizer=tokenizer,
            text_column=text_column,
            max_length=max_length,
            num_samples=num_samples,
            seed=cfg.seed,
        )
        dropped = prepared.dropped
        dataset = prepared.columns if prepared.columns is not None else prepared.dataset
        if loss_fn is None and model_loss_fn is None:
            loss_fn = default_loss_fn(model, prepared)
            if loss_fn is not None:
                exclude = frozenset({"labels"})
        if prepared.kind == "causal-lm":
            forward_kwargs = {"use_cache": False, **(forward_kwargs or {})}
    data = TensorBatches(dataset, device, collate_fn)
    data.dropped = {**dropped, **data.dropped}
    checks.check_finite_columns(data.columns)
    checks.check_model_data(model, kind, data.columns)
    if model_loss_fn is None:
        checks.check_forward_inputs(model, data.columns, forward_kwargs, data.dropped)
    return data, loss_fn, forward_kwargs, exclude


def _check_sizes(cfg: SamplerConfig, n: int) -> float:
    """The batch and L_n(w*) sample counts fit the n samples; returns nβ."""
    if cfg.batch_size > n:
        raise ValueError(
            f"batch_size={cfg.batch_size} is larger than the dataset ({n} samples); "
            f"pass SamplerConfig(batch_size=...) ≤ {n}."
        )
    if cfg.nbeta is None and n < 2:
        raise ValueError("nbeta defaults to n / log n, which needs n ≥ 2 samples; pass nbeta.")
    if cfg.init_loss_samples is not None and cfg.init_loss_samples > n:
        raise ValueError(
            f"init_loss_samples={cfg.init_loss_samples} exceeds the dataset size {n}; "
            "pass a smaller value or None."
        )
    return float(cfg.nbeta) if cfg.nbeta is not None else n / math.log(n)


def check_inputs(
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
    mixed_precision: str | None = None,
    accelerator: Any = None,
    **_unused: Any,
) -> float:
    """Dry-run :func:`estimate_llc`'s preparation: check the settings, prepare and check the
    data against the model, and compute the loss of one batch at the current weights w*;
    nothing is sampled. Raises what ``estimate_llc`` would raise before sampling; returns that
    batch's mean loss. The model's weights and train/eval mode are left as they were, and the
    model is not moved (the data goes to its device). Other keyword arguments of
    ``estimate_llc`` (``output_dir``, ``progress``, …) are accepted and ignored.
    """
    cfg = config if config is not None else SamplerConfig()
    if not isinstance(cfg, SamplerConfig):
        raise ValueError(f"config must be a SamplerConfig, got {type(config).__name__}.")
    cfg.validate()
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if loss_fn is not None and model_loss_fn is not None:
        raise ValueError("pass loss_fn or model_loss_fn, not both.")
    checks.check_optional_positive_int("num_samples", num_samples)
    checks.check_optional_positive_int("max_length", max_length)
    precision = resolve_mixed_precision(mixed_precision, accelerator)
    checks.check_parameter_dtypes(model, precision)
    device = _model_device(model)
    data, loss_fn, forward_kwargs, exclude = _prepare_data(
        model,
        dataset,
        cfg,
        device,
        loss_fn=loss_fn,
        model_loss_fn=model_loss_fn,
        forward_kwargs=forward_kwargs,
        collate_fn=collate_fn,
        tokenizer=tokenizer,
        text_column=text_column,
        max_length=max_length,
        num_samples=num_samples,
    )
    _check_sizes(cfg, data.num_samples)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameters (requires_grad=True) to sample.")
    was_training = model.training
    model.eval()
    try:
        # The loss at w* is the model's own forward: no flat copy of the weights is needed
        # (for a large model it would be a second copy in memory).
        problem = ModelLoss(
            model,
            SimpleNamespace(params=[]),
            data,
            loss_fn,
            model_loss_fn=model_loss_fn,
            forward_kwargs=forward_kwargs,
            exclude=exclude,
            autocast=lambda: autocast(precision, device),
        )
        try:
            loss, _ = problem.init_loss(min(cfg.batch_size, data.num_samples), cfg.batch_size)
        except RuntimeError as err:
            checks.explain_forward_error(err, model, data.columns)
            raise
    finally:
        model.train(was_training)
    return loss


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
        num_samples: use the first N rows (required for an ``IterableDataset``).
        accelerator: an ``accelerate.Accelerator``; without one, ``accelerate launch`` /
            ``torchrun`` environments are detected. Chains are split over the processes (chain
            c on process c mod P), each on its process's device (the model is moved there),
            and gathered to every process; the result does not depend on P. The model and
            data are never ``prepare()``-d (see :mod:`hf_llc.distributed`).
        mixed_precision: ``"no"``, ``"bf16"`` (forward/backward under autocast, sampling
            state fp32) or ``"fp16"`` (refused); default: the accelerator's setting.
        progress: show a progress bar (on the main process).
        output_dir: a folder for checkpoints and results (see :mod:`hf_llc.checkpoint`):
            every chain's full state is saved there periodically and when it finishes, the
            result goes to ``output_dir/result.json``, and SIGINT (Ctrl-C) or SIGTERM save
            the running chain, write ``partial_result.json`` (the finished chains) and raise
            :class:`~hf_llc.checkpoint.EstimateInterrupted` (a ``KeyboardInterrupt``).
            Chains run one after another per process. The run holds the folder's lock until
            it ends (a second run on it gets :class:`~hf_llc.checkpoint.OutputDirLocked`; a
            stale lock of a dead process is taken over with a warning), and with
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

    Returns:
        :class:`LLCResult`. Chains that diverge are excluded from the mean and reported in
        ``diagnostics["divergences"]`` with their step and a suggestion, plus a warning.
    """
    cfg = config if config is not None else SamplerConfig()
    if not isinstance(cfg, SamplerConfig):
        raise ValueError(f"config must be a SamplerConfig, got {type(config).__name__}.")
    cfg.validate()
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if loss_fn is not None and not callable(loss_fn):
        raise ValueError("loss_fn must be callable as loss_fn(outputs, batch).")

    if loss_fn is not None and model_loss_fn is not None:
        raise ValueError("pass loss_fn or model_loss_fn, not both.")
    checks.check_optional_positive_int("num_samples", num_samples)
    checks.check_optional_positive_int("max_length", max_length)
    procs = process_info(accelerator, _model_device(model))
    precision = resolve_mixed_precision(mixed_precision, accelerator)
    checks.check_parameter_dtypes(model, precision)
    run_dir = None
    if output_dir is not None:
        run_dir = RunCheckpoint(
            output_dir,
            checkpoint_every=checkpoint_every,
            checkpoint_seconds=checkpoint_seconds,
            is_main=procs.is_main,
            process_index=procs.index,
        )
        run_dir.check_start(resume)
        procs.wait()  # every process has looked before the main one writes the manifest
    elif resume:
        raise ValueError(
            "resume=True needs output_dir (--output-dir): the folder of the run to continue."
        )
    elif checkpoint_every is not None:
        raise ValueError(
            f"checkpoint_every={checkpoint_every!r} (--checkpoint-every) does nothing without "
            "output_dir (--output-dir), where checkpoints are written: pass both, or neither."
        )
    device = procs.device
    if _model_device(model) != device:
        model.to(device)
    data, loss_fn, forward_kwargs, exclude = _prepare_data(
        model,
        dataset,
        cfg,
        device,
        loss_fn=loss_fn,
        model_loss_fn=model_loss_fn,
        forward_kwargs=forward_kwargs,
        collate_fn=collate_fn,
        tokenizer=tokenizer,
        text_column=text_column,
        max_length=max_length,
        num_samples=num_samples,
    )
    n = data.num_samples
    nbeta = _check_sizes(cfg, n)

    was_training = model.training
    model.eval()
    try:
        flat = FlatParameters(model)
        problem = ModelLoss(
            model,
            flat,
            data,
            loss_fn,
            model_loss_fn=model_loss_fn,
            forward_kwargs=forward_kwargs,
            exclude=exclude,
            autocast=lambda: autocast(precision, device),
        )
        precond_diag = _precond_diagonal(cfg.preconditioner, flat)
        w_star = flat.w_star.to(device)

        t0 = time.perf_counter()
        init_n = cfg.init_loss_samples or n
        try:
            init_loss, cache = problem.init_loss(init_n, cfg.batch_size)
        except RuntimeError as err:  # the first forward: name the columns of a dtype clash
            checks.explain_forward_error(err, model, data.columns)
            raise
        if init_n != n:
            cache = None
        t_init = time.perf_counter() - t0
        if run_dir is not None:
            fingerprint = _fingerprint(flat, data, nbeta, init_loss, precond_diag, precision)
            run_dir.open(run_manifest(cfg, fingerprint), resume=resume)

        chain_cfg, calibration = cfg, None
        if cfg.step_size == "auto":
            # Pilot chains choose ε (every process runs the same pilots, so all agree); the
            # options come from calibrate_step_size, which also asks to stop here ("only").
            from .calibration import calibrate_problem

            opts = dict(cfg.extra.get("calibration") or {})
            only = opts.pop("only", False)
            # With output_dir the sweep is kept (calibration.json), so a resume reuses it, and
            # SIGINT/SIGTERM stop the pilots with EstimateInterrupted.
            saved = run_dir.load_calibration(opts) if run_dir is not None and resume else None
            if saved is not None:
                from .calibration import CalibrationResult

                calibration = CalibrationResult.from_dict(saved)
            else:
                try:
                    with run_dir.catch_signals() if run_dir is not None else nullcontext():
                        calibration = calibrate_problem(
                            problem,
                            w_star,
                            cfg,
                            nbeta=nbeta,
                            init_loss=init_loss,
                            init_per_sample=cache,
                            precond_diagonal=precond_diag,
                            checkpoint=None if run_dir is None else run_dir.stop_on_signal(),
                            **opts,
                        )
                except ChainStopped as stop:
                    raise run_dir.interrupted_in_calibration(stop.signum) from None
                if run_dir is not None:
                    run_dir.save_calibration(calibration, opts)
            if only:
                return calibration
            chain_cfg = replace(cfg, step_size=calibration.chosen_step_size)

        mine = procs.my_chains(cfg.num_chains)
        bar = None
        if progress and procs.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(mine) * cfg.num_steps, desc="SGLD", unit="step")
        stopped = None
        try:
            # With output_dir: chains finished earlier are loaded, running ones resumed, and
            # every chain checkpointed (batched ones too); SIGINT/SIGTERM stop it with
            # ChainStopped.
            post = LocalPosterior(problem, w_star, nbeta, init_loss, cache, precond_diag)
            with run_dir.catch_signals() if run_dir is not None else nullcontext():
                chains, chain_mode = run_chains(
                    post, chain_cfg, mine, progress=bar, store=run_dir, resume=resume
                )
        except ChainStopped as stop:
            stopped = stop.signum
        finally:
            if bar is not None:
                bar.close()
    finally:
        model.train(was_training)
    if stopped is not None:
        _interrupted(run_dir, stopped, cfg, nbeta, n, flat.numel, init_loss, t_init, procs)
    chains = sorted(procs.gather(chains), key=lambda ch: ch.chain)
    # Once, after sampling (off the hot path), the same on every process: the curvature the
    # verdict's checks of the step and of the localization need.
    model.eval()
    try:
        measured = _verdict_curvature(problem, w_star, chain_cfg, chains, nbeta, precond_diag)
    finally:
        model.train(was_training)

    result = _assemble(
        chains,
        chain_cfg,
        nbeta,
        n,
        flat.numel,
        init_loss,
        t_init,
        warn=procs.is_main,
        measured=measured,
    )
    if calibration is not None:
        # The settings say "auto" (rerunning them reproduces this result); the ε used is here.
        result.config = cfg.to_dict()
        result.diagnostics["calibration"] = calibration.to_dict()
    result.diagnostics["num_processes"] = procs.num_processes
    result.diagnostics["mixed_precision"] = precision
    result.diagnostics["chain_mode"] = chain_mode
    if run_dir is not None:
        run_dir.write_result(result)
    return result


def run_manifest(cfg: SamplerConfig, fingerprint: dict) -> dict:
    """The ``manifest.json`` of a checkpointed run: settings, version, model/data fingerprint."""
    from . import __version__

    settings = cfg.to_dict()
    return {
        "format": CHECKPOINT_FORMAT,
        "hf_llc_version": __version__,
        "config": settings,
        "config_hash": settings_hash(settings),
        "fingerprint": fingerprint,
    }


def _fingerprint(flat, data, nbeta, init_loss, precond_diag, precision) -> dict:
    """What a resumed run must share with the original: sizes, nβ, L_n(w*), weight and data
    hashes (and the custom preconditioner's), precision."""
    columns = data.columns
    return {
        "num_params": flat.numel,
        "num_samples": data.num_samples,
        "nbeta": nbeta,
        "init_loss": init_loss,
        "weights_sha256": tensor_sha256(flat.w_star),
        "data_sha256": None
        if columns is None
        else tensor_sha256(*(columns[k] for k in sorted(columns)))
        + ":"
        + ",".join(sorted(columns)),
        "preconditioner_sha256": None if precond_diag is None else tensor_sha256(precond_diag),
        "mixed_precision": precision,
    }


def _interrupted(run_dir, signum, cfg, nbeta, n, num_params, init_loss, t_init, procs):
    """After a stop signal: write the partial result and raise ``EstimateInterrupted``."""
    finished = run_dir.finished_results(cfg.num_chains)
    partial = None
    if procs.is_main:
        partial = _assemble(finished, cfg, nbeta, n, num_params, init_loss, t_init, warn=False)
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


def _precond_diagonal(preconditioner: Any, flat: FlatParameters) -> Tensor | None:
    if isinstance(preconditioner, str):
        return None
    if isinstance(preconditioner, Mapping):
        diag = flat.flatten(preconditioner)
    elif isinstance(preconditioner, Tensor):
        diag = preconditioner.reshape(-1).to(torch.float32)
    else:
        raise ValueError(
            "preconditioner must be 'identity', 'rmsprop', a dict name → tensor or a flat tensor."
        )
    if diag.numel() != flat.numel:
        raise ValueError(
            f"preconditioner has {diag.numel()} entries but the model samples {flat.numel} "
            "parameters."
        )
    return diag.to(flat.w_star.device)


def _assemble(
    chains, cfg, nbeta, n, num_params, init_loss, t_init, warn=True, measured=None
) -> LLCResult:
    """The result of finished chains. ``measured``: :func:`_verdict_curvature`'s numbers for
    the verdict's checks of the step and the localization (skipped when ``None``)."""
    draws = cfg.num_draws
    trace = np.full((len(chains), draws), np.nan)
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
    healthy = [i for i, ch in enumerate(chains) if not ch.diverged]
    good = np.array([per_chain[i] for i in healthy])
    mean, std, stderr = _mean_std_stderr(good)
    for ch in chains if warn else []:
        for r in ch.retries[: len(ch.retries) - ch.diverged]:
            warnings.warn(
                f"{r['message']}; restarted it from w* with half the step size",
                RuntimeWarning,
                stacklevel=3,
            )
    for d in divergences if warn else []:
        warnings.warn(d["message"], RuntimeWarning, stacklevel=3)
    if not healthy and warn:
        warnings.warn(
            "every chain diverged: the estimate is NaN; reduce step_size (or step_scale).",
            RuntimeWarning,
            stacklevel=3,
        )

    diagnostics: dict[str, Any] = {
        "num_chains_used": len(healthy),
        "divergences": divergences,
        "retries": [r | {"chain": ch.chain} for ch in chains for r in ch.retries],
        "step_size_per_chain": [ch.step_size for ch in chains],
        "step_size_history": [ch.step_size_history for ch in chains],
        "burnin_trace": [ch.burnin_trace.numpy() for ch in chains],
    }
    if cfg.mala:
        acc = [
            float(ch.mala_acceptance.mean())
            for ch in chains
            if not ch.diverged and len(ch.mala_acceptance)
        ]
        diagnostics["mala_acceptance_per_chain"] = acc
        diagnostics["mala_acceptance"] = float(np.mean(acc)) if acc else float("nan")

    result = LLCResult(
        llc_mean=mean,
        llc_std=std,
        llc_stderr=stderr,
        llc_per_chain=per_chain,
        loss_trace=trace,
        init_loss=init_loss,
        nbeta=nbeta,
        num_samples=n,
        num_params=num_params,
        config=cfg.to_dict(),
        diagnostics=diagnostics,
        timings={
            "init_loss_seconds": t_init,
            "sampling_seconds": sum(ch.seconds for ch in chains),
            "chain_seconds": [ch.seconds for ch in chains],
        },
    )
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
    _add_verdict(result, chains, nbeta, init_loss, settings)
    return result


def _verdict_curvature(problem, w_star, cfg, chains, nbeta, precond_diag) -> dict:
    """The curvature numbers the verdict checks (off the hot path: once, after sampling).

    - ``step_times_curvature`` = ε·λ_max(A·∇²U), U = nβ·L + (γ/2)‖w − w*‖². With
      ``step_size="curvature"`` the sampler measured λ_max itself and set ε = c/λ_max, so it is
      ``step_scale`` × 2⁻ᵏ after k restarts (the smallest over the chains that did not
      diverge). With a fixed ε it is measured here by power iteration on one minibatch
      (:func:`hf_llc.sampling.chain.max_curvature`), the larger of the values at w* and at
      w* + σ·ξ, σ = min(√(T·ε·A), 1/√γ) the farthest a chain could have diffused in T steps:
      at a singular w* (the origin of a deep linear network, where ∇²L = 0) the curvature the
      chain meets is away from w*. A is the user's diagonal; for RMSProp, whose A is learned
      per chain and not kept, A ≈ 1 (its normalisation, mean(A) = 1), and for the Fisher
      diagonal A ≈ 1/nβ (its value before the first window: unit curvature of L): both
      approximations, recorded in ``curvature_source``.
    - ``localization_ratio`` = γ / (nβ·λ_max(∇²L)), λ_max the larger of the values at w* and
      at w* + ξ/√γ, the scale the localizer alone would allow: if even there nβ·curvature
      does not exceed γ, the localizer sets the posterior's scale in every direction. 0 for
      γ = 0. With ``"fisher-burnin"`` the localizer's metric is M = A⁻¹/nβ ≈ the curvature
      diagonal of L, so in every direction it is γ/nβ of nβ times the curvature: the ratio is
      γ/nβ, no measurement needed.

    A measurement that fails (or is not finite) is ``None``; the verdict then says that the
    check could not be made.
    """
    from .sampling.chain import max_curvature

    device = w_star.device
    gen = torch.Generator(device=device)
    gen.manual_seed(int(cfg.seed))
    cpu_gen = torch.Generator().manual_seed(int(cfg.seed))
    batch = problem.batch(torch.randperm(problem.num_samples, generator=cpu_gen)[: cfg.batch_size])
    gamma = float(cfg.localization)
    healthy = [ch for ch in chains if not ch.diverged]

    def noise() -> Tensor:
        return torch.randn(w_star.shape, generator=gen, device=device, dtype=w_star.dtype)

    def curvature(points, *, nb, loc, precond_sqrt) -> float | None:
        best = 0.0
        try:
            for w in points:
                lam, _ = max_curvature(
                    problem,
                    w,
                    w_star,
                    batch,
                    nbeta=nb,
                    localization=loc,
                    precond_sqrt=precond_sqrt,
                    v0=noise(),
                    iters=cfg.curvature_iters,
                )
                best = max(best, lam)
        except (RuntimeError, ValueError):
            return None
        return best if math.isfinite(best) else None

    out: dict[str, Any] = {}
    if cfg.step_size == "curvature":
        attempts = [len(ch.retries) for ch in healthy] or [0]
        out["step_times_curvature"] = cfg.step_scale * 0.5 ** max(attempts)
        out["curvature_source"] = "sampler"
    else:
        eps = min([ch.step_size for ch in healthy] or [float(cfg.step_size)])
        sqrt_a = precond_diag.sqrt() if precond_diag is not None else None
        fisher = str(cfg.preconditioner).startswith("fisher")
        if fisher:
            sqrt_a = torch.full_like(w_star, 1 / math.sqrt(nbeta))
        reach = math.sqrt(cfg.num_steps * eps)
        sigma = (sqrt_a * reach) if sqrt_a is not None else torch.full_like(w_star, reach)
        if gamma > 0:
            sigma = sigma.clamp(max=1 / math.sqrt(gamma))
        lam = curvature(
            [w_star, w_star + sigma * noise()], nb=nbeta, loc=gamma, precond_sqrt=sqrt_a
        )
        out["step_times_curvature"] = None if lam is None else eps * lam
        out["curvature_source"] = (
            "measured, A≈1/nβ"
            if fisher
            else "measured, A≈1"
            if str(cfg.preconditioner).startswith("rmsprop")
            else "measured"
        )
    if gamma > 0 and str(cfg.preconditioner).startswith("fisher"):
        out["localization_ratio"] = gamma / nbeta
    elif gamma > 0:
        lam = curvature(
            [w_star, w_star + noise() / math.sqrt(gamma)], nb=1.0, loc=0.0, precond_sqrt=None
        )
        out["localization_ratio"] = (
            None if lam is None else (gamma / (nbeta * lam) if lam > 0 else math.inf)
        )
    else:
        out["localization_ratio"] = 0.0
    return out


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
    )


def _mean_std_stderr(values: np.ndarray) -> tuple[float, float, float]:
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return mean, std, std / math.sqrt(len(values))

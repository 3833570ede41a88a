r"""The localized posterior of a run at the model's current weights w*.

:func:`open_posterior` does what :func:`hf_llc.estimate_llc` and
:func:`hf_llc.calibrate_step_size` share before any chain runs: check the arguments, set up the
processes and the output folder, prepare the data, and build the :class:`Posterior`: the flat
parameters, the loss problem, w*, nβ, L_n(w*), the per-sample losses at w* and the
preconditioner's diagonal.

The model's weights are never written: a chain samples a flat fp32 copy of the parameters,
whose views stand in for the model's parameters while the loss is evaluated and are swapped
back afterwards, so the weights are exactly w* after the call, error or not.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from . import checks
from ._attention import batched_attention, sdpa_models
from ._version import __version__
from .adapters import LABEL_ALIASES, data_info, default_loss_fn, model_kind, prepare_dataset
from .checkpoint import FORMAT_VERSION as CHECKPOINT_FORMAT
from .checkpoint import RunCheckpoint, tensor_sha256
from .distributed import ProcessInfo, autocast, process_info, resolve_mixed_precision
from .peft_support import frozen_adapter_hint
from .sampling import LocalPosterior, SamplerConfig
from .sampling.config import chain_settings
from .selection import ParameterSelection, sampled_only, select_with_slices
from .serialization import settings_hash


class FlatParameters:
    """The sampled parameters of a module as one flat fp32 vector, and views back into it.

    ``slices`` (name → sorted flat indices of the sampled entries; see
    :func:`hf_llc.selection.select_with_slices`) marks parameters sampled only in part (an
    attention head's rows of a fused matrix): the vector holds just those entries, and
    :meth:`views` rebuilds the full tensor with every other entry a constant copy of w*.
    """

    def __init__(self, model: nn.Module, slices: Mapping[str, Tensor] | None = None):
        self.names: list[str] = []
        self.shapes: list[torch.Size] = []
        self.dtypes: list[torch.dtype] = []
        self.offsets: list[int] = []
        self.params: list[nn.Parameter] = []
        #: name → sampled flat indices of the parameters sampled in part (empty: none is).
        self.slices: dict[str, Tensor] = {}
        # Per parameter, for those sampled in part: (its unsampled entries at w*, the order
        # that puts cat(sampled, unsampled) back into the parameter's flat layout); else None.
        self._rebuild: list[tuple[Tensor, Tensor] | None] = []
        self.sizes: list[int] = []
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
            values = p.detach().reshape(-1)
            index = None if slices is None else slices.get(name)
            self._rebuild.append(None if index is None else self._split(name, values, index))
            if index is not None:
                values = values[self.slices[name]]
            self.sizes.append(values.numel())
            offset += values.numel()
            flats.append(values.to(torch.float32))
        if not flats:
            raise ValueError(
                "the model has no trainable parameters (requires_grad=True) to sample."
                + frozen_adapter_hint(model)
            )
        self.numel = offset
        self.w_star = torch.cat(flats)

    def _split(self, name: str, values: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """Record ``index`` as ``name``'s sampled entries; return (the other entries at w*,
        the order that puts cat(sampled, others) back into ``values``' layout)."""
        index = index.to(values.device)
        self.slices[name] = index
        others = torch.ones(values.numel(), dtype=torch.bool, device=values.device)
        others[index] = False
        order = torch.empty(values.numel(), dtype=torch.long, device=values.device)
        order[index] = torch.arange(index.numel(), device=values.device)
        order[others] = torch.arange(index.numel(), values.numel(), device=values.device)
        return values[others].clone(), order

    def views(self, w: Tensor) -> dict[str, Tensor]:
        """name → view of ``w`` shaped (and cast) like the parameter; differentiable.

        A parameter sampled in part is a new tensor instead: its sampled entries from ``w``,
        the others the constant w* (exactly, in the parameter's dtype). Works eagerly and under
        ``torch.func.vmap`` over a leading chain dimension of ``w``."""
        # One split (its backward is one concatenation into the flat gradient) rather than a
        # slice per parameter (whose backward scatters each piece into a zero-filled copy).
        pieces = torch.split(w, self.sizes)
        out = {}
        for name, shape, dtype, t, rebuild in zip(
            self.names, self.shapes, self.dtypes, pieces, self._rebuild
        ):
            if rebuild is not None:
                others, order = rebuild
                t = torch.cat((t, others.to(t.dtype))).index_select(0, order)
            t = t.view(shape)
            out[name] = t if dtype == torch.float32 else t.to(dtype)
        return out

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Flatten a dict shaped like the parameters (e.g. a preconditioner diagonal); of a
        parameter sampled in part, only the sampled entries."""
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise ValueError(f"preconditioner is missing entries for parameters {missing[:5]}.")
        pieces = []
        for n in self.names:
            piece = tensors[n].reshape(-1).to(torch.float32)
            if n in self.slices:
                piece = piece[self.slices[n].to(piece.device)]
            pieces.append(piece)
        return torch.cat(pieces)


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
        self._attention_models: list[nn.Module] | None = None  # see transformable()
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
        with non-fp32 parameters, or with parameters sampled only in part (their unsampled
        entries cannot be views of ``w``), get ``None`` and use :meth:`loss`.
        """
        if (
            w.dtype != torch.float32
            or any(d != torch.float32 for d in self.flat.dtypes)
            or self.flat.slices
        ):
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

    def transformable(self):
        """A context manager within which the loss supports ``torch.func.vmap`` and double
        backward where the model can: a transformers model's SDPA attention is switched to a
        mask path free of data-dependent branches on SDPA's math backend
        (:func:`hf_llc._attention.batched_attention`), and back afterwards."""
        if self._attention_models is None:  # found once: this runs at every batched step
            self._attention_models = sdpa_models(self.model)
        return batched_attention(self.model, self._attention_models)

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


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@dataclass
class PreparedData:
    """A run's batches and how its loss is computed, as :func:`_prepare_data` settled them."""

    data: TensorBatches
    loss_fn: Callable | None
    model_loss_fn: Callable | None
    forward_kwargs: Mapping[str, Any] | None
    #: Batch columns kept from ``forward`` (the labels when the loss is taken from logits).
    exclude: frozenset[str]
    #: What became of the dataset's rows: ``diagnostics["data"]`` (see :func:`_prepare_data`).
    info: dict[str, Any]

    def problem(self, model: nn.Module, flat: Any, precision: str) -> ModelLoss:
        """The :class:`ModelLoss` of ``model`` on these batches, under ``precision``."""
        device = self.data.device
        return ModelLoss(
            model,
            flat,
            self.data,
            self.loss_fn,
            model_loss_fn=self.model_loss_fn,
            forward_kwargs=self.forward_kwargs,
            exclude=self.exclude,
            autocast=lambda: autocast(precision, device),
        )


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
    drop_empty_rows: bool = True,
    block_size: int | None = None,
    dataset_description: Mapping[str, Any] | None = None,
) -> PreparedData:
    """Prepare the data (see :mod:`hf_llc.adapters`) and check it against the model, once,
    before any loss is computed.

    The returned ``info`` (``diagnostics["data"]``) says what became of the rows: ``rows_in``
    (rows read), ``rows_dropped_empty`` (rows without a target, dropped before n was counted;
    ``None`` where not checked: ``collate_fn``, a dict of tensors, a model kind whose targets
    hf_llc does not know), ``rows_used`` (n), ``block_size``, ``num_samples``,
    ``drop_empty_rows`` and ``dataset`` (:func:`hf_llc.adapters.describe_dataset`).
    """
    exclude: frozenset[str] = frozenset()
    dropped: dict[str, str] = {}
    kind = model_kind(model)
    options = dict(
        num_samples=num_samples,
        drop_empty_rows=drop_empty_rows,
        block_size=block_size,
        dataset_description=dataset_description,
    )
    if collate_fn is None:
        prepared = prepare_dataset(
            model,
            dataset,
            tokenizer=tokenizer,
            text_column=text_column,
            max_length=max_length,
            seed=cfg.seed,
            **options,
        )
        info = prepared.info
        dropped = prepared.dropped
        dataset = prepared.columns if prepared.columns is not None else prepared.dataset
        if loss_fn is None and model_loss_fn is None:
            loss_fn = default_loss_fn(model, prepared)
            if loss_fn is not None:
                exclude = frozenset({"labels"})
        if prepared.kind == "causal-lm":
            forward_kwargs = {"use_cache": False, **(forward_kwargs or {})}
    else:
        if block_size is not None:
            raise ValueError(
                "block_size is hf_llc's own data preparation, which collate_fn replaces: cut "
                "the blocks in collate_fn's dataset yourself, or leave collate_fn unset."
            )
        info = data_info(dataset, **options)
    data = TensorBatches(dataset, device, collate_fn)
    info["rows_used"] = data.num_samples
    if info["rows_in"] is None:
        info["rows_in"] = data.num_samples
    data.dropped = {**dropped, **data.dropped}
    checks.check_finite_columns(data.columns)
    checks.check_model_data(model, kind, data.columns)
    if model_loss_fn is None:
        checks.check_forward_inputs(model, data.columns, forward_kwargs, data.dropped)
    return PreparedData(data, loss_fn, model_loss_fn, forward_kwargs, exclude, info)


def _check_sizes(cfg: SamplerConfig, n: int) -> float:
    """The batch and L_n(w*) sample counts fit the n samples; returns nβ (n / log n unless
    ``cfg.nbeta`` is given)."""
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


def checked_config(config: SamplerConfig | None) -> SamplerConfig:
    """``config`` (``SamplerConfig()`` if ``None``), validated."""
    cfg = config if config is not None else SamplerConfig()
    if not isinstance(cfg, SamplerConfig):
        raise ValueError(f"config must be a SamplerConfig, got {type(config).__name__}.")
    cfg.validate()
    return cfg


def _check_arguments(
    model: nn.Module,
    loss_fn: Callable | None,
    model_loss_fn: Callable | None,
    num_samples: int | None,
    max_length: int | None,
    *,
    callable_loss: bool = False,
) -> None:
    """The model is a module, at most one loss override is given and the counts are valid;
    with ``callable_loss``, ``loss_fn`` (when given) is callable."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if callable_loss and loss_fn is not None and not callable(loss_fn):
        raise ValueError("loss_fn must be callable as loss_fn(outputs, batch).")
    if loss_fn is not None and model_loss_fn is not None:
        raise ValueError("pass loss_fn or model_loss_fn, not both.")
    checks.check_optional_positive_int("num_samples", num_samples)
    checks.check_optional_positive_int("max_length", max_length)


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
    drop_empty_rows: bool = True,
    block_size: int | None = None,
    dataset_description: Mapping[str, Any] | None = None,
    parameters: ParameterSelection | None = None,
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
    cfg = checked_config(config)
    _check_arguments(model, loss_fn, model_loss_fn, num_samples, max_length)
    precision = resolve_mixed_precision(mixed_precision, accelerator)
    with sampled_only(model, select_with_slices(model, parameters)[0]):
        checks.check_parameter_dtypes(model, precision)
        prepared = _prepare_data(
            model,
            dataset,
            cfg,
            _model_device(model),
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
        )
        data = prepared.data
        _check_sizes(cfg, data.num_samples)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(
                "the model has no trainable parameters (requires_grad=True) to sample."
                + frozen_adapter_hint(model)
            )
        with _eval_mode(model):
            # The loss at w* is the model's own forward: no flat copy of the weights is needed
            # (for a large model it would be a second copy in memory).
            problem = prepared.problem(model, SimpleNamespace(params=[]), precision)
            try:
                loss, _ = problem.init_loss(min(cfg.batch_size, data.num_samples), cfg.batch_size)
            except RuntimeError as err:
                checks.explain_forward_error(err, model, data.columns)
                raise
        return loss


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block; its train/eval mode is restored however it ends."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class RunContext:
    """Where a run executes: its processes, mixed precision and output folder (or ``None``)."""

    procs: ProcessInfo
    precision: str
    run_dir: RunCheckpoint | None
    resume: bool

    def catch_signals(self) -> Any:
        """With an output folder, SIGINT/SIGTERM stop the chains (``ChainStopped``)."""
        return self.run_dir.catch_signals() if self.run_dir is not None else nullcontext()


def _start_run(
    model: nn.Module,
    *,
    accelerator: Any,
    mixed_precision: str | None,
    output_dir: str | Path | None,
    resume: bool,
    checkpoint_every: int | None,
    checkpoint_seconds: float | None,
) -> RunContext:
    """The processes, the precision and the output folder (its lock taken); the model is moved
    to this process's device."""
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
    if _model_device(model) != procs.device:
        model.to(procs.device)
    return RunContext(procs, precision, run_dir, resume)


@dataclass
class Posterior:
    r"""The localized tempered posterior p(w) ∝ exp(−nβ·L_n(w) − (γ/2)·‖w − w*‖²) of a run.

    ``problem`` evaluates L_B(w) on minibatches B; ``init_per_sample`` holds the n per-sample
    losses at w* when the loss returns them and L_n(w*) was taken over the whole dataset (else
    ``None``); ``precond_diagonal`` is a user-given preconditioner diagonal (else ``None``).
    """

    flat: FlatParameters
    problem: ModelLoss
    w_star: Tensor
    nbeta: float
    init_loss: float
    init_per_sample: Tensor | None
    precond_diagonal: Tensor | None
    #: Seconds spent computing L_n(w*).
    init_seconds: float
    #: What became of the dataset's rows (``diagnostics["data"]``, see :func:`_prepare_data`).
    data_info: dict[str, Any] | None = None
    #: The sampled parameters when ``parameters=`` chose them (``diagnostics["parameters"]``,
    #: see :func:`hf_llc.selection.select_parameters`), else ``None``.
    selection: dict[str, Any] | None = None

    @property
    def num_samples(self) -> int:
        """n, the dataset size."""
        return self.problem.num_samples

    @property
    def local(self) -> LocalPosterior:
        """What the chains need of it (:class:`hf_llc.sampling.LocalPosterior`)."""
        return LocalPosterior(
            self.problem,
            self.w_star,
            self.nbeta,
            self.init_loss,
            self.init_per_sample,
            self.precond_diagonal,
        )

    @property
    def num_params(self) -> int:
        """The number of sampled parameters."""
        return self.flat.numel


def build_posterior(
    model: nn.Module,
    prepared: PreparedData,
    cfg: SamplerConfig,
    nbeta: float,
    precision: str,
    slices: Mapping[str, Tensor] | None = None,
) -> Posterior:
    """The :class:`Posterior` of ``model`` (in eval mode) at its current weights w*: L_n(w*)
    over the first ``cfg.init_loss_samples`` samples (all by default), with the per-sample
    cache kept only when that is the whole dataset. ``slices``: the parameters sampled only in
    part (see :class:`FlatParameters`)."""
    data = prepared.data
    flat = FlatParameters(model, slices)
    problem = prepared.problem(model, flat, precision)
    precond_diag = _precond_diagonal(cfg.preconditioner, flat)
    w_star = flat.w_star.to(data.device)

    t0 = time.perf_counter()
    init_n = cfg.init_loss_samples or data.num_samples
    try:
        init_loss, cache = problem.init_loss(init_n, cfg.batch_size)
    except RuntimeError as err:  # the first forward: name the columns of a dtype clash
        checks.explain_forward_error(err, model, data.columns)
        raise
    if init_n != data.num_samples:
        cache = None
    t_init = time.perf_counter() - t0
    return Posterior(
        flat, problem, w_star, nbeta, init_loss, cache, precond_diag, t_init, prepared.info
    )


@contextmanager
def open_posterior(
    model: nn.Module,
    dataset: Any,
    cfg: SamplerConfig,
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
    output_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    checkpoint_seconds: float | None = 300.0,
) -> Iterator[tuple[RunContext, Posterior]]:
    """Check the arguments, set up the run, prepare the data and build the posterior of
    ``model`` at w* (the arguments are :func:`hf_llc.estimate_llc`'s); yields the run and the
    posterior with the model in eval mode, its train/eval mode restored afterwards. With an
    output folder, the run's manifest is written (or, with ``resume``, checked) there first.
    """
    _check_arguments(model, loss_fn, model_loss_fn, num_samples, max_length, callable_loss=True)
    # A bad pattern or head spec fails before any work.
    selection, slices = select_with_slices(model, parameters)
    run = _start_run(
        model,
        accelerator=accelerator,
        mixed_precision=mixed_precision,
        output_dir=output_dir,
        resume=resume,
        checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds,
    )
    prepared = _prepare_data(
        model,
        dataset,
        cfg,
        run.procs.device,
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
    )
    nbeta = _check_sizes(cfg, prepared.data.num_samples)
    with _eval_mode(model), sampled_only(model, selection):
        posterior = build_posterior(model, prepared, cfg, nbeta, run.precision, slices)
        posterior.selection = selection
        if run.run_dir is not None:
            fingerprint = _fingerprint(posterior, prepared.data, run.precision)
            run.run_dir.open(run_manifest(cfg, fingerprint), resume=resume)
        yield run, posterior


def run_manifest(cfg: SamplerConfig, fingerprint: dict) -> dict:
    """The ``manifest.json`` of a checkpointed run: settings, version, model/data fingerprint.
    The settings are those of the chains (:func:`~hf_llc.sampling.config.chain_settings`: a
    report such as ``robustness`` may be turned on or off when the run is resumed)."""
    settings = chain_settings(cfg.to_dict())
    return {
        "format": CHECKPOINT_FORMAT,
        "hf_llc_version": __version__,
        "config": settings,
        "config_hash": settings_hash(settings),
        "fingerprint": fingerprint,
    }


def _fingerprint(posterior: Posterior, data: TensorBatches, precision: str) -> dict:
    """What a resumed run must share with the original: sizes, nβ, L_n(w*), weight and data
    hashes (and the custom preconditioner's), precision."""
    columns = data.columns
    precond_diag = posterior.precond_diagonal
    return {
        "num_params": posterior.num_params,
        "num_samples": data.num_samples,
        "nbeta": posterior.nbeta,
        "init_loss": posterior.init_loss,
        "weights_sha256": tensor_sha256(posterior.flat.w_star),
        **({} if posterior.selection is None else {"parameters": posterior.selection["names"]}),
        **_slices_fingerprint(posterior.flat),
        "data_sha256": None
        if columns is None
        else tensor_sha256(*(columns[k] for k in sorted(columns)))
        + ":"
        + ",".join(sorted(columns)),
        "preconditioner_sha256": None if precond_diag is None else tensor_sha256(precond_diag),
        "mixed_precision": precision,
    }


def _slices_fingerprint(flat: FlatParameters) -> dict:
    """For parameters sampled in part (attention heads), the hash of which entries; else
    nothing, so the manifests of other runs are unchanged."""
    if not flat.slices:
        return {}
    indices = [flat.slices[name].cpu() for name in sorted(flat.slices)]
    return {"parameter_slices_sha256": tensor_sha256(*indices)}


def _precond_diagonal(preconditioner: Any, flat: FlatParameters) -> Tensor | None:
    """A user-given preconditioner (dict name → tensor, or flat tensor) as one flat fp32
    diagonal on w*'s device; ``None`` for a named one (``"identity"``, ``"rmsprop"``, …)."""
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

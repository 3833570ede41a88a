"""Up-front checks of ``estimate_llc``'s inputs: one clear ``ValueError`` naming the argument
(or dataset column) and the fix, raised before any work, instead of an error from deep inside
``torch``/``transformers``/``datasets`` halfway through.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

TOKEN_KINDS = ("causal-lm", "masked-lm", "token-classification", "sequence-classification")


def check_optional_positive_int(name: str, value: Any) -> None:
    """``num_samples``/``max_length``: ``None`` or an integer ≥ 1."""
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1 (or None), got {value!r}.")


def check_not_empty(dataset: Any) -> None:
    """A dataset (or the rows ``num_samples`` kept) with no rows."""
    try:
        n = len(next(iter(dataset.values()))) if isinstance(dataset, Mapping) else len(dataset)
    except (TypeError, StopIteration):
        return  # no length (or no columns): TensorBatches reports it
    if n == 0:
        raise ValueError(
            "dataset is empty (0 rows): check the split / data file, or the filter that "
            "produced it; the LLC needs at least one sample."
        )


def check_text_column(dataset: Any, text_column: str) -> None:
    """The raw-text column must hold strings."""
    features = getattr(dataset, "features", None) or {}
    feature = features.get(text_column)
    dtype = getattr(feature, "dtype", None)
    if dtype is not None and dtype not in ("string", "large_string"):
        raise ValueError(
            f"text_column={text_column!r} holds {dtype} values, not text: pass the name of a "
            "string column as text_column, or tokenize the data yourself (input_ids)."
        )


def check_model_columns(kind: str, names: list[str]) -> None:
    """Language-model kinds need token ids (after any tokenization)."""
    if kind in TOKEN_KINDS and not {"input_ids", "inputs_embeds"} & set(names):
        raise ValueError(
            f"a {kind} model needs an 'input_ids' column or raw text, but the dataset has "
            f"columns {names}: pass text_column=... naming the text column (with "
            "tokenizer=...), or tokenize the data first."
        )


def check_labels_present(kind: str, columns: Mapping[str, Any] | None) -> None:
    """The default sequence-classification loss needs the class labels."""
    if columns is not None and "labels" not in columns:
        raise ValueError(
            f"the default {kind} loss needs a 'label' (or 'labels') column, but the dataset "
            f"has columns {sorted(columns)}: add the labels, or pass loss_fn=... for another "
            "objective."
        )


def check_label_values(values: list, name: str) -> None:
    """Sequence-level labels must be numbers (class ids, or one regression target)."""
    bad = next((v for v in values if isinstance(v, (str, bytes))), None)
    if bad is not None:
        raise ValueError(
            f"column {name!r} holds text ({bad!r}), not class ids: map the labels to integers "
            "0..num_labels-1 first (e.g. dataset.class_encode_column)."
        )


def check_finite_columns(columns: Mapping[str, Tensor] | None) -> None:
    """NaN/inf in a floating-point data column would make every loss non-finite."""
    for name, column in (columns or {}).items():
        if not (isinstance(column, Tensor) and column.is_floating_point()):
            continue
        bad = ~torch.isfinite(column)
        if bad.any():
            rows = bad.reshape(len(column), -1).any(dim=1).nonzero().flatten()
            raise ValueError(
                f"dataset column {name!r} has non-finite values (NaN or inf) in "
                f"{len(rows)} row(s), the first at row {int(rows[0])}: drop or fix those rows."
            )


def check_forward_inputs(
    model: nn.Module, columns: Mapping[str, Any] | None, forward_kwargs: Mapping | None
) -> None:
    """Every required argument of ``model.forward`` must come from a column or forward_kwargs."""
    if columns is None:
        return
    given = set(columns) | set(forward_kwargs or {})
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    required = [
        n
        for n, p in params.items()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    missing = [n for n in required if n not in given]
    if missing:
        raise ValueError(
            f"{type(model).__name__}.forward needs {missing} but the dataset has columns "
            f"{sorted(columns)}: rename or add those columns, pass them in forward_kwargs, or "
            "pass model_loss_fn=... to call the model yourself."
        )


def check_parameter_dtypes(model: nn.Module, mixed_precision: str) -> None:
    """fp16 weights run the forward in fp16, which SGLD's nβ-scaled gradients do not survive."""
    if mixed_precision != "no":
        return
    for name, p in model.named_parameters():
        if p.requires_grad and p.dtype == torch.float16:
            raise ValueError(
                f"the model's parameters are float16 (e.g. {name!r}) and mixed_precision='no': "
                "SGLD needs fp32 weights (nβ·∇L under/overflows in fp16). Convert the model "
                "with model.float() (load_checkpoint loads float32); for faster compute pass "
                "mixed_precision='bf16' with the fp32 model."
            )

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

from ._logging import get_logger
from .tasks import ADAPTED_TASKS

logger = get_logger(__name__)

TOKEN_KINDS = ADAPTED_TASKS


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
    model: nn.Module,
    columns: Mapping[str, Any] | None,
    forward_kwargs: Mapping | None,
    dropped: Mapping[str, str] | None = None,
) -> None:
    """Every required argument of ``model.forward`` must come from a column or forward_kwargs.

    ``dropped``: columns left out because they are not numeric of one fixed shape (name →
    why); a required argument among them is named as such rather than as missing.
    """
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
    unusable = [n for n in missing if n in (dropped or {})]
    if unusable:
        name = unusable[0]
        raise ValueError(
            f"{type(model).__name__}.forward needs {name!r}, and the dataset's column {name!r} "
            f"could not be made a tensor: it holds {dropped[name]}. Give it numbers of one "
            "fixed shape per row (pad ragged rows), or pass collate_fn=... to batch it yourself."
        )
    if missing:
        raise ValueError(
            f"{type(model).__name__}.forward needs {missing} but the dataset has columns "
            f"{sorted(columns)}: rename or add those columns, pass them in forward_kwargs, or "
            "pass model_loss_fn=... to call the model yourself."
        )


def check_parameter_dtypes(model: nn.Module, mixed_precision: str) -> None:
    """fp16 weights run the forward in fp16, which SGLD's nβ-scaled gradients do not survive:
    refused. bf16 weights get a notice: the sampling state is fp32 regardless, but the forward
    and backward then run in bf16 (the weights are cast from the fp32 state)."""
    if mixed_precision != "no":
        return
    bf16 = None
    for name, p in model.named_parameters():
        if p.requires_grad and p.dtype == torch.bfloat16 and bf16 is None:
            bf16 = name
        if p.requires_grad and p.dtype == torch.float16:
            raise ValueError(
                f"the model's parameters are float16 (e.g. {name!r}) and mixed_precision='no': "
                "SGLD needs fp32 weights (nβ·∇L under/overflows in fp16). Convert the model "
                "with model.float() (load_checkpoint loads float32); for faster compute pass "
                "mixed_precision='bf16' with the fp32 model."
            )
    if bf16 is not None:
        logger.warning(
            "the model's parameters are bfloat16 (e.g. %r) with mixed_precision='no': the "
            "sampling state is fp32 regardless, but each forward/backward runs in bfloat16 on "
            "weights rounded from it. For an fp32 forward pass model.float() (load_checkpoint "
            "loads float32); mixed_precision='bf16' with the fp32 model gives bf16 autocast.",
            bf16,
        )


# --------------------------------------------------------------------------- data vs model
# Run once, before sampling, on the column tensors (vectorised): a bad value found here is
# named with its column and first row instead of failing inside the forward, possibly deep
# into a run (an index error in an embedding, a device-side assert on a GPU).

LABEL_COLUMNS = ("label", "labels", "label_ids")
IGNORE_INDEX = -100
# Columns the model embeds or indexes: they must hold integers.
INTEGER_COLUMNS = ("input_ids", "token_type_ids", "position_ids")


def check_label_columns(names: Any) -> None:
    """``label``, ``labels`` and ``label_ids`` all become ``labels``: only one may be given."""
    present = [n for n in LABEL_COLUMNS if n in set(names)]
    if len(present) > 1:
        raise ValueError(
            f"the dataset has columns {present}, which all mean the labels ('label' and "
            "'label_ids' are renamed 'labels'): keep one, e.g. "
            f"dataset.remove_columns({present[1:]!r})."
        )


def why_not_a_tensor(values: Any) -> str:
    """Why a column could not be stacked into one tensor: text, ragged rows, or other."""
    try:
        items = list(values)
    except TypeError:
        return f"{type(values).__name__} values"
    for i, v in enumerate(items):
        if isinstance(v, (str, bytes)):
            return f"text (row {i}: {v!r:.40})"
        if v is None:
            return f"missing values (row {i} is None)"
    lengths = {}
    for i, v in enumerate(items):
        try:
            lengths.setdefault(len(v), i)
        except TypeError:
            continue
        if len(lengths) > 1:
            (la, ra), (lb, rb) = list(lengths.items())
            return (
                f"ragged rows (row {ra} has {la} values, row {rb} has {lb}): pad them to one "
                "length, or pass collate_fn=... to batch them yourself"
            )
    return "values that are not numbers of one fixed shape"


def check_text_values(dataset: Any, text_column: str) -> None:
    """Every value of the raw-text column must be a string (not None, a list, a number)."""
    for i, value in enumerate(dataset[text_column]):
        if not isinstance(value, str):
            kind = type(value).__name__
            fix = (
                "join the pieces into one string per row"
                if isinstance(value, (list, tuple))
                else "drop or fill such rows (e.g. dataset.filter(lambda r: "
                f"isinstance(r[{text_column!r}], str)))"
            )
            raise ValueError(
                f"text_column={text_column!r}: row {i} holds {value!r:.60} ({kind}), not a "
                f"string: {fix}, or pass the name of another column as text_column (CLI: "
                "--text-column)."
            )


def check_token_label_lengths(ids: list, labels: list, name: str) -> None:
    """Token-level labels align one-to-one with ``input_ids`` (nothing is cut or padded)."""
    for i, (row_ids, row_labels) in enumerate(zip(ids, labels)):
        if len(row_ids) != len(row_labels):
            raise ValueError(
                f"column {name!r}: row {i} has {len(row_labels)} token labels but "
                f"{len(row_ids)} input_ids: token labels must align one-to-one with input_ids "
                "(use -100 for tokens without a label, e.g. via the tokenizer's word_ids())."
            )


def _first_bad(bad: Tensor) -> tuple[int, int, str]:
    """(count of rows, first row, 'position p' or '') of a boolean mask over a column."""
    rows = bad.reshape(len(bad), -1)
    per_row = rows.any(dim=1)
    first = int(per_row.nonzero()[0])
    where = ""
    if bad.ndim > 1:
        where = f", position {int(rows[first].nonzero()[0])}"
    return int(per_row.sum()), first, where


def _config_int(config: Any, *names: str) -> tuple[str, int] | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return name, value
    return None


def _vocab_size(model: nn.Module) -> tuple[str, int] | None:
    getter = getattr(model, "get_input_embeddings", None)
    try:
        embedding = getter() if getter is not None else None
    except Exception:  # not every model has (or implements) input embeddings
        embedding = None
    if isinstance(embedding, nn.Embedding):
        return "input embeddings", embedding.num_embeddings
    found = _config_int(getattr(model, "config", None), "vocab_size")
    return (f"config.{found[0]}", found[1]) if found else None


def _max_positions(model: nn.Module) -> tuple[str, int] | None:
    """The longest sequence a model with *learned* absolute position embeddings accepts.

    Only those fail on longer inputs (rotary or relative positions do not index a table).
    RoBERTa-style tables start at ``padding_idx + 1`` and hold that many fewer positions.
    """
    found = _config_int(
        getattr(model, "config", None), "max_position_embeddings", "n_positions", "n_ctx"
    )
    if found is None:
        return None
    name, limit = found
    for module_name, module in model.named_modules():
        leaf = module_name.rsplit(".", 1)[-1]
        if not isinstance(module, nn.Embedding) or module.num_embeddings != limit:
            continue
        if "pos" in leaf or leaf == "wpe":
            offset = 0 if module.padding_idx is None else module.padding_idx + 1
            return f"config.{name}", limit - offset
    return None


def _check_range(name: str, column: Tensor, low: int, high: int, what: str, fix: str) -> None:
    """Integer values of ``column`` in [low, high) (the ignore index −100 allowed for labels)."""
    bad = (column < low) | (column >= high)
    if name == "labels":
        bad &= column != IGNORE_INDEX
    if bad.any():
        count, row, where = _first_bad(bad)
        value = column[bad][0].item()
        raise ValueError(
            f"column {name!r} has {what} {value} at row {row}{where} ({count} row(s) out of "
            f"range): {fix}"
        )


def check_model_data(model: nn.Module, kind: str, columns: Mapping[str, Tensor] | None) -> None:
    """The data fits the model: integer token ids below the vocabulary size (≥ 0), class and
    token labels in range (integers for classifiers), sequences no longer than the model's
    learned positions, token labels shaped like ``input_ids``. Vectorised, once per estimate."""
    if not columns:
        return
    model_name = type(model).__name__
    config = getattr(model, "config", None)
    for name in INTEGER_COLUMNS:
        column = columns.get(name)
        if isinstance(column, Tensor) and (column.is_floating_point() or column.is_complex()):
            raise ValueError(
                f"column {name!r} holds {column.dtype} values, but token ids must be integers: "
                "cast it (e.g. column.long()), or check that the right column is named "
                f"{name!r}."
            )
    ids = columns.get("input_ids")
    if isinstance(ids, Tensor) and ids.ndim >= 1:
        vocab = _vocab_size(model)
        if vocab is not None:
            source, size = vocab
            hint = (
                " (-100 is the ignore index of labels, not a token id)"
                if (ids == IGNORE_INDEX).any()
                else ""
            )
            _check_range(
                "input_ids",
                ids,
                0,
                size,
                "token id",
                f"{model_name} has {size} token ids (0..{size - 1}, its {source}){hint}; "
                "tokenize with the checkpoint's own tokenizer, or use a model whose vocabulary "
                "covers the data.",
            )
        positions = _max_positions(model)
        if positions is not None and ids.ndim == 2:
            source, limit = positions
            if ids.shape[1] > limit:  # positions 0..width-1 are embedded, padding included
                mask = columns.get("attention_mask")
                lengths = torch.full((len(ids),), ids.shape[1])
                if isinstance(mask, Tensor) and mask.shape == ids.shape:
                    lengths = (mask != 0).sum(dim=1)
                row = int(lengths.argmax())
                raise ValueError(
                    f"sequences are {ids.shape[1]} tokens long (the longest is row {row}, with "
                    f"{int(lengths[row])}) but {model_name} "
                    f"accepts at most {limit} positions ({source}): pass max_length={limit} "
                    f"(CLI: --max-length {limit}) to truncate them, or shorten the data."
                )
    types = columns.get("token_type_ids")
    type_vocab = _config_int(config, "type_vocab_size")
    if isinstance(types, Tensor) and type_vocab is not None:
        _check_range(
            "token_type_ids",
            types,
            0,
            type_vocab[1],
            "token type",
            f"{model_name} has config.type_vocab_size={type_vocab[1]}; check the column.",
        )
    labels = columns.get("labels")
    if isinstance(labels, Tensor):
        _check_labels(model, kind, labels, ids)


def _check_labels(model: nn.Module, kind: str, labels: Tensor, ids: Tensor | None) -> None:
    model_name = type(model).__name__
    config = getattr(model, "config", None)
    problem = getattr(config, "problem_type", None)
    num_labels = _config_int(config, "num_labels")
    if kind == "token-classification" and isinstance(ids, Tensor):
        if labels.shape[:2] != ids.shape[:2]:
            raise ValueError(
                f"column 'labels' has shape {tuple(labels.shape)} but 'input_ids' has shape "
                f"{tuple(ids.shape)}: token labels must align one-to-one with input_ids (use "
                "-100 for tokens without a label)."
            )
    classes = kind in ("token-classification", "sequence-classification")
    if kind == "sequence-classification":
        if (
            num_labels is None
            or num_labels[1] == 1
            or problem
            in (
                "regression",
                "multi_label_classification",
            )
        ):
            return  # regression / multi-label targets are real numbers
    if classes and labels.is_floating_point():
        fractional = labels != labels.round()
        if labels.ndim == 1 and fractional.any():
            count, row, where = _first_bad(fractional)
            raise ValueError(
                f"column 'labels' holds non-integer class labels ({labels[fractional][0].item()} "
                f"at row {row}{where}, {count} row(s)) for {model_name}, a classifier with "
                f"num_labels={num_labels[1] if num_labels else '?'}: map them to integer "
                "classes 0..num_labels-1, or set config.problem_type='regression' (with "
                "num_labels=1) for real-valued targets."
            )
    if labels.is_floating_point() and not classes:
        return
    if classes and num_labels is not None:
        _check_range(
            "labels",
            labels.long() if labels.is_floating_point() else labels,
            0,
            num_labels[1],
            "class",
            f"{model_name} has num_labels={num_labels[1]} (classes 0..{num_labels[1] - 1}"
            "; -100 marks tokens without a label): map the labels into that range, or load "
            f"the model with num_labels=... matching the data.",
        )
    elif kind in ("causal-lm", "masked-lm"):
        vocab = _vocab_size(model)
        if vocab is not None:
            _check_range(
                "labels",
                labels,
                0,
                vocab[1],
                "target token id",
                f"{model_name} has {vocab[1]} token ids (0..{vocab[1] - 1}; -100 marks "
                "positions without a target): check the labels column.",
            )


def explain_forward_error(
    err: Exception, model: nn.Module, columns: Mapping[str, Tensor] | None
) -> None:
    """Raise a ``ValueError`` naming the columns when the forward at w* failed on a dtype
    mismatch between the data and the model's parameters (else return; the caller re-raises)."""
    text = str(err)
    names = ("Float", "Double", "BFloat16", "Half", "Long", "Int", "float", "double", "long")
    if not ("dtype" in text or "scalar type" in text) or not any(n in text for n in names):
        return
    param = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    listing = {
        name: str(col.dtype).replace("torch.", "")
        for name, col in (columns or {}).items()
        if isinstance(col, Tensor)
    }
    suspects = [
        name
        for name, col in (columns or {}).items()
        if isinstance(col, Tensor)
        and name not in ("labels", "attention_mask", *INTEGER_COLUMNS)
        and col.dtype != param
    ]
    which = f"column(s) {suspects}" if suspects else f"the columns ({listing})"
    raise ValueError(
        f"{type(model).__name__}'s forward failed on the first batch because of a dtype "
        f"mismatch ({' '.join(text.split())[:200]}): the model's parameters are "
        f"{str(param).replace('torch.', '')} but {which} hold "
        f"{', '.join(listing[s] for s in suspects) or 'other types'}: cast the data to the "
        "model's dtype (e.g. column.float()) or the model to the data's (model.float())."
    ) from err

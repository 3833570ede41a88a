"""Turn a ``PreTrainedModel`` and a ``datasets`` dataset into the loss the sampler needs.

What the adapter decides, once, before sampling:

- **Data.** Raw text (``text_column``) is tokenized with the checkpoint's tokenizer
  (truncation at ``max_length``); tokenized rows are padded once to the longest row, so that
  every minibatch is one indexing operation on fixed-shape tensors. Causal LMs get
  ``labels`` = ``input_ids`` with padding set to −100. Masked LMs get their masks drawn **once**,
  from ``seed`` (15% of tokens; 80% → mask token, 10% → random token, 10% kept), so that
  L_n is one fixed function of the weights rather than a new random objective per batch.
  ``label``/``label_ids`` columns are renamed ``labels``.
- **Loss.** For token-level losses (causal LM, masked LM, token classification) the
  per-sample loss is the sum of that sample's token losses divided by T̄, the dataset's mean
  number of target tokens per sample. Its mean over any batch is an unbiased estimate of
  L_n = (total token loss) / (total target tokens), the dataset's mean token loss, which
  therefore does not depend on how samples are batched or padded. Sequence classification
  uses per-sample cross-entropy (or squared error for one regression label). Per-sample
  losses enable the exact cached L_n(w*) and the paired estimator. Other models use
  ``outputs.loss``. ``num_items_in_batch`` is never passed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checks
from .tasks import ADAPTED_TASKS, model_task

MASK_PROBABILITY = 0.15

# Column names renamed to ``labels`` (as ``Trainer`` does).
LABEL_ALIASES = {"label": "labels", "label_ids": "labels"}


def model_kind(model: nn.Module) -> str:
    """The loss hf_llc builds for ``model``: its task (:func:`hf_llc.tasks.model_task`) when
    that is one of :data:`~hf_llc.tasks.ADAPTED_TASKS` (``causal-lm``, ``masked-lm``,
    ``token-classification``, ``sequence-classification``), else ``"other"``."""
    task = model_task(model)
    return task if task in ADAPTED_TASKS else "other"


@dataclass
class PreparedData:
    """Column tensors ready for :class:`hf_llc.estimator.TensorBatches`, and how they were made."""

    columns: dict[str, Tensor] | None
    dataset: Any
    kind: str
    tokens_per_sample: float | None  # T̄ for token-level losses
    # Columns left out because they are not numeric of one fixed shape: name → why.
    dropped: dict[str, str] = field(default_factory=dict)


def prepare_dataset(
    model: nn.Module,
    dataset: Any,
    *,
    tokenizer: Any = None,
    text_column: str | None = None,
    max_length: int | None = None,
    num_samples: int | None = None,
    seed: int = 0,
) -> PreparedData:
    """Select, tokenize, pad and label ``dataset`` for ``model`` (see the module docstring)."""
    kind = model_kind(model)
    dataset = _materialize(dataset, num_samples)
    checks.check_not_empty(dataset)
    if isinstance(dataset, Mapping):
        checks.check_label_columns(dataset)
        return PreparedData(None, dataset, kind, None)
    names = list(getattr(dataset, "column_names", None) or [])
    checks.check_label_columns(names)
    if text_column is not None and text_column not in names:
        raise ValueError(
            f"text_column={text_column!r} is not a column of the dataset (columns: {names}); "
            "pass the name of its raw-text column as text_column (CLI: --text-column)."
        )
    if text_column is None and "input_ids" not in names and "text" in names and kind != "other":
        text_column = "text"
    if text_column is not None:
        if tokenizer is None:
            raise ValueError(
                f"the dataset has raw text in {text_column!r}: pass tokenizer=... (the CLI uses "
                "the checkpoint's own tokenizer)."
            )
        checks.check_text_column(dataset, text_column)
        checks.check_text_values(dataset, text_column)
        dataset = _tokenize(dataset, tokenizer, text_column, max_length)
        names = list(dataset.column_names)
    checks.check_model_columns(kind, names)
    if "input_ids" not in names:
        return PreparedData(None, dataset, kind, None)

    pad_id = _pad_id(tokenizer, model)
    dropped: dict[str, str] = {}
    columns = _pad_columns(dataset, pad_id, max_length, kind, dropped)
    mask = columns["attention_mask"]
    if kind == "causal-lm":
        labels = columns["input_ids"].masked_fill(mask == 0, -100)
        columns["labels"] = labels
    elif kind == "masked-lm":
        columns["input_ids"], columns["labels"] = _mask_tokens(
            columns["input_ids"], mask, tokenizer, model, seed
        )
    tokens = None
    if kind in ("causal-lm", "masked-lm", "token-classification") and "labels" in columns:
        targets = _target_mask(columns["labels"], kind)
        total = int(targets.sum())
        if total == 0:
            raise ValueError(
                "every label is -100 (no token to predict): check the labels column, or that "
                "texts are longer than one token."
            )
        tokens = total / len(targets)
    return PreparedData(columns, dataset, kind, tokens, dropped)


def default_loss_fn(model: nn.Module, prepared: PreparedData) -> Callable | None:
    """The per-sample loss for the model kinds we know, or ``None`` for ``outputs.loss``."""
    kind = prepared.kind
    if prepared.tokens_per_sample is not None:
        t_bar = prepared.tokens_per_sample

        def token_loss(outputs, batch):
            logits, labels = outputs.logits, batch["labels"]
            if kind == "causal-lm":
                # Position t predicts token t + 1; the last position predicts nothing. Shifting
                # the labels (not the logits) avoids copying the logits, the largest tensor.
                labels = F.pad(labels[:, 1:], (0, 1), value=-100)
            per_token = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                labels.reshape(-1),
                ignore_index=-100,
                reduction="none",
            ).view(labels.shape)
            return per_token.sum(dim=1) / t_bar

        return token_loss
    if kind == "sequence-classification":
        checks.check_labels_present(kind, prepared.columns)

        def sequence_loss(outputs, batch):
            logits, labels = outputs.logits.float(), batch["labels"]
            if logits.shape[-1] == 1:
                return 0.5 * (logits.squeeze(-1) - labels.float()) ** 2
            return F.cross_entropy(logits, labels.long(), reduction="none")

        return sequence_loss
    return None


def _materialize(dataset: Any, num_samples: int | None) -> Any:
    if isinstance(dataset, Mapping):
        if num_samples is not None:
            return {k: v[:num_samples] for k, v in dataset.items()}
        return dataset
    try:
        from datasets import Dataset, IterableDataset
    except ImportError:  # pragma: no cover - datasets is a dependency
        Dataset = IterableDataset = ()
    if isinstance(dataset, IterableDataset):
        if num_samples is None:
            raise ValueError(
                "an IterableDataset has no length: pass num_samples=N to take its first N rows."
            )
        rows = list(dataset.take(num_samples))
        if len(rows) < num_samples:
            raise ValueError(
                f"num_samples={num_samples} but the iterable dataset has only {len(rows)} rows."
            )
        return Dataset.from_list(rows)
    if num_samples is not None:
        if num_samples > len(dataset):
            raise ValueError(
                f"num_samples={num_samples} is larger than the dataset ({len(dataset)} rows); "
                "pass a smaller value or leave it unset."
            )
        if hasattr(dataset, "select"):
            return dataset.select(range(num_samples))
    return dataset


def _tokenize(dataset, tokenizer, text_column: str, max_length: int | None):
    limit = max_length or getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit > 1_000_000:
        limit = None

    def encode(rows):
        return tokenizer(rows[text_column], truncation=limit is not None, max_length=limit)

    keep = [c for c in dataset.column_names if c in ("label", "labels", "label_ids")]
    drop = [c for c in dataset.column_names if c not in keep]
    out = dataset.map(encode, batched=True, remove_columns=drop)
    lengths = [len(x) for x in out["input_ids"]]
    if not lengths or max(lengths) == 0:
        raise ValueError(f"column {text_column!r} tokenized to empty sequences.")
    return out


def _pad_id(tokenizer, model) -> int:
    for source in (tokenizer, getattr(model, "config", None)):
        for attr in ("pad_token_id", "eos_token_id"):
            value = getattr(source, attr, None) if source is not None else None
            if isinstance(value, int):
                return value
    return 0


def _pad_columns(
    dataset, pad_id: int, max_length: int | None, kind: str, dropped: dict[str, str]
) -> dict[str, Tensor]:
    """Pad the token columns to one width; other numeric columns travel along (the others
    are recorded in ``dropped`` with the reason)."""
    ids = [list(x) for x in dataset["input_ids"]]
    first_id = next((row[0] for row in ids if row), 0)
    if not isinstance(first_id, int):  # arrow columns hold one type: the first row tells
        raise ValueError(
            f"column 'input_ids' holds {type(first_id).__name__} values ({first_id!r}), but "
            "token ids must be integers: cast the column (e.g. "
            "dataset.cast_column('input_ids', Sequence(Value('int64'))))."
        )
    width = max(len(x) for x in ids)
    if max_length is not None:
        width = min(width, max_length)
    n = len(ids)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    given_mask = "attention_mask" in dataset.column_names
    masks = dataset["attention_mask"] if given_mask else None
    for i, row in enumerate(ids):
        row = row[:width]
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        if given_mask:
            mask[i, : len(row)] = torch.tensor(list(masks[i])[: len(row)], dtype=torch.long)
        else:
            mask[i, : len(row)] = 1
    columns = {"input_ids": input_ids, "attention_mask": mask}
    if "token_type_ids" in dataset.column_names:
        tt = torch.zeros((n, width), dtype=torch.long)
        for i, row in enumerate(dataset["token_type_ids"]):
            row = list(row)[:width]
            tt[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        columns["token_type_ids"] = tt
    for name in dataset.column_names:
        target = LABEL_ALIASES.get(name, name)
        if target in columns:
            continue
        if target != "labels":
            # Other columns (targets for a custom loss_fn, …) travel along when numeric.
            try:
                columns[target] = torch.as_tensor(dataset.with_format("torch")[name][:])
            except (TypeError, ValueError, RuntimeError):
                dropped[name] = checks.why_not_a_tensor(dataset[name])
            continue
        values = dataset[name]
        first = values[0]
        if isinstance(first, (list, tuple)) and kind == "sequence-classification":
            raise ValueError(
                f"column {name!r} holds a list per row ({list(first)[:5]!r}), but the default "
                "sequence-classification loss takes one class id (or one regression target) "
                "per row: for multi-label targets pass loss_fn=... (e.g. binary cross-entropy "
                "on outputs.logits)."
            )
        if isinstance(first, (list, tuple)):  # token-level labels: pad with -100
            if kind not in ("causal-lm", "masked-lm"):  # those make their own labels
                checks.check_token_label_lengths(ids, values, name)
            # float64 holds every integer label exactly; fractions are refused, never cut.
            lab = torch.full((n, width), -100, dtype=torch.float64)
            for i, row in enumerate(values):
                row = list(row)[:width]
                lab[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
            fractional = lab != lab.round()
            if fractional.any():
                row = int(fractional.any(dim=1).nonzero()[0])
                raise ValueError(
                    f"column {name!r} holds non-integer token labels (row {row}: "
                    f"{lab[fractional][0].item()}): token labels are class ids (or -100); map "
                    "them to integers."
                )
            columns["labels"] = lab.long()
        else:
            checks.check_label_values(values, name)
            columns["labels"] = torch.as_tensor(list(values))
    return columns


def _target_mask(labels: Tensor, kind: str) -> Tensor:
    if kind == "causal-lm":
        labels = labels[:, 1:]
    return labels != -100


def _mask_tokens(input_ids, attention_mask, tokenizer, model, seed: int):
    mask_id = getattr(tokenizer, "mask_token_id", None) if tokenizer is not None else None
    if mask_id is None:
        raise ValueError(
            "masked-LM collation needs a tokenizer with a mask token: pass tokenizer=..."
        )
    vocab = getattr(model.config, "vocab_size", None) or len(tokenizer)
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for sid in getattr(tokenizer, "all_special_ids", []) or []:
        special |= input_ids == sid
    gen = torch.Generator().manual_seed(seed)
    candidates = (attention_mask == 1) & ~special
    chosen = (torch.rand(input_ids.shape, generator=gen) < MASK_PROBABILITY) & candidates
    labels = input_ids.masked_fill(~chosen, -100)
    roll = torch.rand(input_ids.shape, generator=gen)
    random_tokens = torch.randint(vocab, input_ids.shape, generator=gen)
    masked = input_ids.clone()
    masked[chosen & (roll < 0.8)] = mask_id
    replace = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[replace] = random_tokens[replace]
    return masked, labels

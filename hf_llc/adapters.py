"""Turn a ``PreTrainedModel`` and a ``datasets`` dataset into the loss the sampler needs.

What the adapter decides, once, before sampling:

- **Data.** Raw text (``text_column``) is tokenized with the checkpoint's tokenizer
  (truncation at ``max_length``); tokenized rows are padded once to the longest row, so that
  every minibatch is one indexing operation on fixed-shape tensors. Causal LMs get
  ``labels`` = ``input_ids`` with padding set to −100. Masked LMs get their masks drawn **once**,
  from ``seed`` (15% of tokens; 80% → mask token, 10% → random token, 10% kept), so that
  L_n is one fixed function of the weights rather than a new random objective per batch.
  ``label``/``label_ids`` columns are renamed ``labels``.
- **Rows.** Rows without a target (a causal-LM text of fewer than two tokens, token labels all
  −100, …) are dropped before n is counted, and counted (``drop_empty_rows``); with
  ``block_size`` a causal LM's texts are concatenated and cut into equal blocks instead. What
  became of the rows, and the dataset's name, config, split and revision
  (:func:`describe_dataset`), are recorded for ``result.diagnostics["data"]``.
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

import itertools
import math
import re
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
    #: What became of the rows (see :func:`prepare_dataset`); ``diagnostics["data"]``.
    info: dict[str, Any] = field(default_factory=dict)


def data_info(
    dataset: Any,
    *,
    num_samples: int | None = None,
    drop_empty_rows: bool = True,
    block_size: int | None = None,
    dataset_description: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a run's data before it is read: the settings and the dataset's
    description; :func:`prepare_dataset` fills in the row counts."""
    return {
        "rows_in": None,
        "rows_dropped_empty": None,
        "rows_used": None,
        "num_samples": num_samples,
        "drop_empty_rows": bool(drop_empty_rows),
        "block_size": block_size,
        "dataset": describe_dataset(dataset, **dict(dataset_description or {})),
    }


def prepare_dataset(
    model: nn.Module,
    dataset: Any,
    *,
    tokenizer: Any = None,
    text_column: str | None = None,
    max_length: int | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    drop_empty_rows: bool = True,
    block_size: int | None = None,
    dataset_description: Mapping[str, Any] | None = None,
) -> PreparedData:
    """Select, tokenize, pad and label ``dataset`` for ``model`` (see the module docstring).

    Empty rows: with ``drop_empty_rows`` (the default) the rows without a target are dropped
    before n is counted: for a causal LM rows of fewer than two tokens (nothing to predict),
    for token classification rows whose labels are all −100, for a masked LM rows without a
    maskable token, for sequence classification rows without any token. ``num_samples`` then
    takes the first ``num_samples`` rows *that have a target* (rows are read until there are
    that many). Rows are checked only where hf_llc makes the columns (a ``datasets`` dataset
    with token ids or raw text, for the model kinds above); elsewhere
    ``info["rows_dropped_empty"]`` is ``None``.

    ``block_size`` (causal LMs only): the tokenized rows are concatenated, in order, and cut
    into blocks of ``block_size`` tokens, the last incomplete block dropped; each block is one
    sample, and ``num_samples`` counts blocks. Texts are tokenized whole (no truncation) and
    joined as the tokenizer returns them (no separator is added).

    ``dataset_description`` overrides fields of :func:`describe_dataset`'s description.
    The row counts are in ``PreparedData.info`` (``rows_in``: rows read; ``rows_dropped_empty``;
    ``rows_used``: n).
    """
    kind = model_kind(model)
    info = data_info(
        dataset,
        num_samples=num_samples,
        drop_empty_rows=drop_empty_rows,
        block_size=block_size,
        dataset_description=dataset_description,
    )
    _check_block_size(model, kind, block_size, max_length)
    if isinstance(dataset, Mapping):
        if block_size is not None:
            raise ValueError(
                "block_size needs a datasets.Dataset of raw text or token ids to concatenate, "
                "but the dataset is a dict of tensors: pass a datasets.Dataset, or cut the "
                "blocks yourself."
            )
        dataset = _materialize(dataset, num_samples)
        checks.check_not_empty(dataset)
        checks.check_label_columns(dataset)
        return PreparedData(None, dataset, kind, None, info=info)
    if not _is_hf_dataset(dataset):  # any indexable dataset: taken as it is
        dataset = _materialize(dataset, num_samples)
        checks.check_not_empty(dataset)
        return PreparedData(None, dataset, kind, None, info=info)

    reader = _RowReader(dataset, num_samples, rows_counted=block_size is None)
    first = reader.first()
    checks.check_not_empty(first)
    text_column = _text_column(first, text_column, tokenizer, kind, block_size)

    def tokenized(chunk):
        if text_column is None:
            return chunk
        checks.check_text_values(chunk, text_column)
        limit = None if block_size is not None else max_length
        return _tokenize(chunk, tokenizer, text_column, limit, truncate=block_size is None)

    rows = _collect_rows(reader, tokenized(first), tokenized, kind, tokenizer, max_length, info)
    if text_column is not None and not any(len(x) for x in rows["input_ids"]):
        raise ValueError(f"column {text_column!r} tokenized to empty sequences.")
    names = list(rows.column_names)
    checks.check_model_columns(kind, names)
    if "input_ids" not in names:
        info["rows_in"] = len(rows)
        return PreparedData(None, rows, kind, None, info=info)
    dropped: dict[str, str] = {}
    if block_size is not None:
        rows = _blocks(rows, block_size, num_samples, info, dropped)
    else:
        rows = _drop_empty(rows, num_samples, drop_empty_rows, info)

    pad_id = _pad_id(tokenizer, model)
    columns = _pad_columns(rows, pad_id, max_length, kind, dropped)
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
    return PreparedData(columns, rows, kind, tokens, dropped, info)


def _text_column(
    first: Any, text_column: str | None, tokenizer: Any, kind: str, block_size: int | None
) -> str | None:
    """The raw-text column to tokenize (``text`` by default for the known model kinds when
    there are no ``input_ids``), checked on the first rows; ``None`` for token ids."""
    names = list(first.column_names or [])
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
        checks.check_text_column(first, text_column)
    if block_size is not None and text_column is None and "input_ids" not in names:
        raise ValueError(
            f"block_size needs raw text (text_column) or an 'input_ids' column to concatenate, "
            f"but the dataset has columns {names}."
        )
    return text_column


def describe_dataset(dataset: Any, **overrides: Any) -> dict[str, Any]:
    """``{"name", "config", "split", "revision", "source"}`` of a ``datasets`` dataset, from
    its ``info`` and ``split``; ``overrides`` (e.g. ``name="org/data"``) replace fields.

    - A dataset read from the Hub: ``name`` is its repo id and ``revision`` the commit its files
      were read at (both from the file addresses the download recorded), ``source="hub"``.
    - Read from local data files (``load_dataset("json", data_files=...)``, or a
      ``save_to_disk`` copy of such a dataset): ``name`` is ``None``, never a path on this
      machine, ``source="local"``.
    - Built in memory (``Dataset.from_dict``, a dict of tensors, …): all ``None``,
      ``source="memory"``.
    - Otherwise (a Hub dataset streamed, or a local dataset folder): ``name`` is the dataset
      name ``datasets`` recorded (the repo's or folder's last part), ``source=None``.
    """
    info = getattr(dataset, "info", None)
    split = getattr(dataset, "split", None)
    out: dict[str, Any] = {
        "name": None,
        "config": None,
        "split": None if split is None else str(split),
        "revision": None,
        "source": "memory",
    }
    builder = getattr(info, "builder_name", None)
    if builder is not None:
        hub = _hub_origin(getattr(info, "download_checksums", None))
        config = getattr(info, "config_name", None)
        if hub is not None:
            out.update(name=hub[0], revision=hub[1], config=config, source="hub")
        elif getattr(info, "dataset_name", None) in (None, builder):
            out.update(source="local")  # a file-format builder on local files: no name
        else:
            out.update(name=info.dataset_name, config=config, source=None)
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def _hub_origin(checksums: Any) -> tuple[str, str | None] | None:
    """(repo id, revision) from the recorded data-file addresses of a Hub dataset."""
    for url in checksums or {}:
        match = _HUB_FILE.match(str(url))
        if match:
            return match["repo"] or match["repo2"], match["revision"] or match["rev2"]
    return None


_HUB_FILE = re.compile(
    r"^(?:hf://datasets/(?P<repo>[^@/]+(?:/[^@/]+)?)@(?P<revision>[^/]+)/"
    r"|https://huggingface\.co/datasets/(?P<repo2>[^/]+/[^/]+)/resolve/(?P<rev2>[^/]+)/)"
)


def _is_hf_dataset(dataset: Any) -> bool:
    try:
        from datasets import Dataset, IterableDataset
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    return isinstance(dataset, (Dataset, IterableDataset))


def _check_block_size(model: nn.Module, kind: str, block_size: Any, max_length: Any) -> None:
    if block_size is None:
        return
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2:
        raise ValueError(
            f"block_size must be an integer ≥ 2 (or None), got {block_size!r}: a causal LM "
            "predicts each token of a block from the ones before it."
        )
    if kind != "causal-lm":
        raise ValueError(
            f"block_size concatenates texts into blocks for causal language models, but "
            f"{type(model).__name__} is not one (task {model_task(model)!r}): leave block_size "
            "unset (CLI: --block-size) and use max_length to truncate rows."
        )
    if max_length is not None:
        raise ValueError(
            f"pass block_size or max_length, not both: with block_size={block_size} every "
            "sample is exactly that many tokens (texts are concatenated, never truncated)."
        )
    positions = checks._max_positions(model)
    if positions is not None and block_size > positions[1]:
        raise ValueError(
            f"block_size={block_size} is longer than {type(model).__name__} accepts "
            f"({positions[1]} positions, its {positions[0]}): pass block_size ≤ {positions[1]}."
        )


class _RowReader:
    """A dataset's rows in order, a ``datasets.Dataset`` chunk at a time: first the rows
    ``num_samples`` asks for (all without it), then, through :meth:`more`, further rows.
    ``rows_counted=False`` (``num_samples`` counts blocks): fewer rows than that are fine."""

    def __init__(self, dataset: Any, num_samples: int | None, rows_counted: bool = True):
        from datasets import IterableDataset

        self.dataset = dataset
        self.num_samples = num_samples
        self.rows_counted = rows_counted
        self.iterator = iter(dataset) if isinstance(dataset, IterableDataset) else None
        self.read = 0

    def first(self) -> Any:
        from datasets import Dataset

        n = self.num_samples
        if self.iterator is not None:
            if n is None:
                raise ValueError(
                    "an IterableDataset has no length: pass num_samples=N to take its first N rows."
                )
            chunk = self.more(n)
            got = 0 if chunk is None else len(chunk)
            if got < n and self.rows_counted:
                raise ValueError(f"num_samples={n} but the iterable dataset has only {got} rows.")
            return chunk if chunk is not None else Dataset.from_dict({})
        if n is None:
            self.read = len(self.dataset)
            return self.dataset
        if n > len(self.dataset) and self.rows_counted:
            raise ValueError(
                f"num_samples={n} is larger than the dataset ({len(self.dataset)} rows); "
                "pass a smaller value or leave it unset."
            )
        chunk = self.more(n)
        return chunk if chunk is not None else self.dataset

    def more(self, count: int) -> Any:
        """The next ``count`` rows (fewer at the end), or ``None`` when none are left."""
        from datasets import Dataset

        if self.iterator is not None:
            rows = list(itertools.islice(self.iterator, count))
            self.read += len(rows)
            return Dataset.from_list(rows) if rows else None
        stop = min(self.read + count, len(self.dataset))
        if stop <= self.read:
            return None
        chunk = self.dataset.select(range(self.read, stop))
        self.read = stop
        return chunk


def _collect_rows(
    reader: _RowReader,
    rows: Any,
    tokenized: Callable[[Any], Any],
    kind: str,
    tokenizer: Any,
    max_length: int | None,
    info: dict[str, Any],
) -> Any:
    """The tokenized rows, read on until there are ``num_samples`` samples (rows with a
    target, or blocks) when empty rows are dropped or blocks are cut; records per row whether
    it has a target (``info["_targets"]``) or its token count (``info["_lengths"]``)."""
    if "input_ids" not in rows.column_names:
        return rows
    block_size, want = info["block_size"], reader.num_samples
    parts = [rows]

    def measure(part) -> None:
        if block_size is not None:
            info.setdefault("_lengths", []).extend(_attended_lengths(part))
        else:
            flags = _target_flags(kind, part, max_length, tokenizer)
            if flags is not None:
                info.setdefault("_targets", []).extend(flags)

    def have() -> int:
        if block_size is not None:
            return sum(info["_lengths"]) // block_size
        if info["drop_empty_rows"] and "_targets" in info:
            return sum(info["_targets"])
        return reader.read

    measure(rows)
    while want is not None and have() < want:
        got = have()
        # Read as many rows again as the rows so far suggest are needed (at least one).
        rate = got / reader.read if got else 0.0
        count = max(1, math.ceil((want - got) / rate)) if rate else max(1, reader.read)
        chunk = reader.more(count)
        if chunk is None:
            break
        part = tokenized(chunk)
        measure(part)
        parts.append(part)
    if len(parts) == 1:
        return rows
    from datasets import concatenate_datasets

    features = parts[0].features
    return concatenate_datasets([p if p.features == features else p.cast(features) for p in parts])


def _attended_lengths(rows: Any) -> list[int]:
    """Tokens per row (those the attention mask keeps, when there is one)."""
    if "attention_mask" in rows.column_names:
        return [sum(1 for a in mask if a) for mask in rows["attention_mask"]]
    return [len(ids) for ids in rows["input_ids"]]


def _target_flags(
    kind: str, rows: Any, max_length: int | None, tokenizer: Any
) -> list[bool] | None:
    """Per row, whether it has a target once truncated at ``max_length`` (``None`` for a
    model kind whose targets hf_llc does not know). Causal LM: a token at position ≥ 1;
    masked LM: a token that may be masked (attended, not special); token classification: a
    label other than −100 (any token, without labels); sequence classification: any token."""
    if kind == "other":
        return None
    names = rows.column_names
    masks = rows["attention_mask"] if "attention_mask" in names else None
    label_name = next((n for n in checks.LABEL_COLUMNS if n in names), None)
    labels = rows[label_name] if kind == "token-classification" and label_name else None
    special = set()
    if kind == "masked-lm" and tokenizer is not None:
        special = set(getattr(tokenizer, "all_special_ids", None) or [])
    flags = []
    for i, ids in enumerate(rows["input_ids"]):
        ids = list(ids)[:max_length] if max_length is not None else list(ids)
        attended = list(masks[i])[: len(ids)] if masks is not None else [1] * len(ids)
        if kind == "causal-lm":
            flags.append(any(attended[1:]))
        elif kind == "masked-lm":
            flags.append(any(a and t not in special for t, a in zip(ids, attended)))
        elif labels is not None and isinstance(labels[i], (list, tuple)):
            flags.append(any(v != checks.IGNORE_INDEX for v in list(labels[i])[: len(ids)]))
        else:
            flags.append(any(attended))
    return flags


def _drop_empty(
    rows: Any, num_samples: int | None, drop_empty_rows: bool, info: dict[str, Any]
) -> Any:
    """The first ``num_samples`` rows (all without it), less the rows without a target when
    ``drop_empty_rows``; the counts go to ``info``."""
    flags = info.pop("_targets", None)
    if flags is None:  # targets unknown for this model kind: every row kept, none checked
        count = len(rows) if num_samples is None else min(num_samples, len(rows))
        info["rows_in"] = count
        return rows if count == len(rows) else rows.select(range(count))
    if not drop_empty_rows:
        count = len(rows) if num_samples is None else min(num_samples, len(rows))
        info.update(rows_in=count, rows_dropped_empty=0, empty_rows_kept=count - sum(flags[:count]))
        return rows if count == len(rows) else rows.select(range(count))
    keep = [i for i, f in enumerate(flags) if f]
    if num_samples is not None:
        keep = keep[:num_samples]
    if not keep:
        raise ValueError(
            "every label is -100 (no token to predict): check the labels column, or that "
            f"texts are longer than one token (none of the {len(flags)} rows read has a target)."
        )
    rows_in = len(flags) if num_samples is None or len(keep) < num_samples else keep[-1] + 1
    if num_samples is not None and len(keep) < num_samples:
        raise ValueError(
            f"num_samples={num_samples}, but the dataset has only {len(keep)} rows with a token "
            f"to predict ({rows_in - len(keep)} empty rows dropped): pass num_samples ≤ "
            f"{len(keep)}, or drop_empty_rows=False (CLI: --keep-empty-rows) to count the empty "
            "rows as samples."
        )
    info.update(rows_in=rows_in, rows_dropped_empty=rows_in - len(keep))
    return rows if len(keep) == len(rows) else rows.select(keep)


def _blocks(
    rows: Any,
    block_size: int,
    num_samples: int | None,
    info: dict[str, Any],
    dropped: dict[str, str],
) -> Any:
    """The rows' tokens concatenated in order and cut into blocks of ``block_size`` (the
    remainder dropped; at most ``num_samples`` blocks), as a dataset of ``input_ids``."""
    from datasets import Dataset

    lengths = info.pop("_lengths")
    for name in rows.column_names:
        if name not in ("input_ids", "attention_mask"):
            dropped[name] = "a per-row column, not kept when rows are concatenated (block_size)"
    total = sum(lengths)
    count = total // block_size
    if num_samples is not None:
        if count < num_samples:
            raise ValueError(
                f"num_samples={num_samples} blocks of block_size={block_size} tokens, but the "
                f"dataset holds only {total} tokens ({count} blocks): pass a smaller "
                "num_samples or block_size."
            )
        count = num_samples
    if count == 0:
        raise ValueError(
            f"the dataset holds {total} tokens, fewer than one block of block_size={block_size}: "
            "pass a smaller block_size, or more data."
        )
    need = count * block_size
    stream: list[int] = []
    masks = rows["attention_mask"] if "attention_mask" in rows.column_names else None
    rows_in = 0
    for i, ids in enumerate(rows["input_ids"]):
        if len(stream) >= need:
            break
        rows_in += 1
        ids = list(ids)
        if masks is not None:
            ids = [t for t, a in zip(ids, masks[i]) if a]
        stream.extend(ids)
    empty = sum(1 for n in lengths[:rows_in] if n == 0)
    info.update(
        rows_in=rows_in,
        rows_dropped_empty=empty,
        tokens_in=len(stream),
        tokens_used=need,
    )
    blocks = [stream[s : s + block_size] for s in range(0, need, block_size)]
    return Dataset.from_dict({"input_ids": blocks})


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
    """The first ``num_samples`` rows of a dict of columns or of another indexable dataset."""
    if num_samples is None:
        return dataset
    if isinstance(dataset, Mapping):
        return {k: v[:num_samples] for k, v in dataset.items()}
    try:
        size = len(dataset)
    except TypeError:
        return dataset
    if num_samples > size:
        raise ValueError(
            f"num_samples={num_samples} is larger than the dataset ({size} rows); "
            "pass a smaller value or leave it unset."
        )
    if hasattr(dataset, "select"):
        return dataset.select(range(num_samples))
    return dataset


def _tokenize(dataset, tokenizer, text_column: str, max_length: int | None, truncate: bool = True):
    limit = max_length or getattr(tokenizer, "model_max_length", None)
    if not truncate or (limit is not None and limit > 1_000_000):
        limit = None

    def encode(rows):
        return tokenizer(rows[text_column], truncation=limit is not None, max_length=limit)

    keep = [c for c in dataset.column_names if c in ("label", "labels", "label_ids")]
    drop = [c for c in dataset.column_names if c not in keep]
    return dataset.map(encode, batched=True, remove_columns=drop)


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

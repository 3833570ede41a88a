"""Realizable targets: relabel a regression dataset with the model's own outputs.

The LLC is defined at a local minimum of the population loss. During training the weights w
are usually *not* at a minimum of the training loss L_n, and SGLD then finds lower loss
nearby, so λ̂ = nβ·(E[L] − L_n(w)) can come out negative. The realizable variant (Furman & Lau,
arXiv 2402.03698, rank-transition experiment) replaces each label y by the model's own output
f_w(x): the new loss is zero at w, its minimum, and λ̂ measures the local geometry of the
function the network computes at w. This is meaningful for regression models (squared-error
losses such as the deep linear networks of :mod:`hf_llc.models.dln`), whose outputs live in
the labels' space.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .adapters import LABEL_ALIASES
from .posterior import _columns_from_dataset

TARGETS = ("data", "model")


def check_targets(targets: str) -> str:
    """Return ``targets`` if it is ``"data"`` or ``"model"``; raise a ``ValueError`` otherwise."""
    if targets not in TARGETS:
        raise ValueError(
            f"targets={targets!r}: use 'data' (the dataset's labels) or 'model' (labels "
            "replaced by the model's own outputs; for regression models)."
        )
    return targets


def _output_tensor(outputs: Any) -> Tensor:
    if isinstance(outputs, Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], Tensor):
        return outputs[0]
    raise ValueError(
        "targets='model' needs the model's forward to return a tensor or an output with "
        f"`.logits`; got {type(outputs).__name__}."
    )


@torch.no_grad()
def model_targets(
    model: nn.Module,
    dataset: Any,
    *,
    label_column: str = "labels",
    batch_size: int = 1024,
) -> dict[str, Tensor]:
    """The dataset as column tensors, with ``label_column`` replaced by the model's outputs.

    Args:
        model: a regression model; called as ``model(**inputs)`` with every column except the
            labels, in eval mode (its training mode is restored afterwards), on its device.
        dataset: a ``datasets.Dataset`` with numeric fixed-shape columns, or a mapping of
            equal-length tensors, with a ``label_column`` (``label``/``label_ids`` also accepted).
        label_column: the column to replace.
        batch_size: rows per forward pass.

    Returns:
        A dict of CPU tensors (the inputs unchanged, the labels replaced by ``f_w(x)`` in the
        labels' dtype), usable as the ``dataset`` of :func:`hf_llc.estimate_llc`.

    Raises:
        ValueError: no label column, or the model's outputs do not have the labels' shape
            (e.g. a classifier: its logits are not labels, so there is no realizable variant
            of this kind).
    """
    if isinstance(dataset, Mapping):
        columns = {k: torch.as_tensor(v) for k, v in dataset.items()}
    else:
        columns = _columns_from_dataset(dataset)
    columns = {LABEL_ALIASES.get(k, k): v for k, v in columns.items()}
    label_column = LABEL_ALIASES.get(label_column, label_column)
    if label_column not in columns:
        raise ValueError(
            f"targets='model' replaces the {label_column!r} column, which the dataset lacks "
            f"(columns: {sorted(columns)}); pass label_column=... naming the labels."
        )
    labels = columns[label_column]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = {k: v for k, v in columns.items() if k != label_column}
    was_training = model.training
    model.eval()
    try:
        outputs = []
        for start in range(0, len(labels), batch_size):
            batch = {k: v[start : start + batch_size].to(device) for k, v in inputs.items()}
            outputs.append(_output_tensor(model(**batch)).detach().float().cpu())
    finally:
        model.train(was_training)
    predicted = torch.cat(outputs)
    if predicted.shape != labels.shape:
        raise ValueError(
            f"targets='model' needs outputs shaped like the labels {tuple(labels.shape)}, but "
            f"the model returned {tuple(predicted.shape)}: realizable targets exist only for "
            "regression models; use targets='data' for this model."
        )
    out = {k: v.cpu() for k, v in columns.items()}
    out[label_column] = predicted.to(labels.dtype)
    return out

"""Weight-refined LLCs: which of a model's parameters the chains sample.

By default every parameter with ``requires_grad=True`` is sampled. ``parameters=`` (CLI
``--parameters``) chooses them instead, by glob patterns over ``model.named_parameters()``
names (``"transformer.h.0.*"``, ``"*.attn.*"``), by a predicate ``f(name, parameter) ->
bool``, or by attention heads, ``"transformer.h.0.attn:head=1"`` (:func:`hf_llc.heads`:
only that head's entries of the layer's projection matrices are sampled, the other heads'
entries of the same matrices stay at w*); the other parameters stay at w* throughout, so the
estimate is the LLC of the loss as a function of the chosen weights alone (Wang et al.,
"refined LLCs", arXiv 2410.02984).

Tied weights (e.g. a language model's output layer sharing the input embedding) are one
parameter reachable under several names: a pattern matching any of the names selects it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from .attention_heads import head_masks, is_head_spec, parameter_names

#: What ``parameters=`` accepts: one pattern, several, or a predicate on (name, parameter).
ParameterSelection = str | Sequence[str] | Callable[[str, nn.Parameter], bool]


def _patterns(parameters: Any) -> list[str]:
    patterns = [parameters] if isinstance(parameters, str) else list(parameters)
    if not patterns or not all(isinstance(p, str) and p.strip() for p in patterns):
        raise ValueError(
            f"parameters={parameters!r}: pass glob patterns over model.named_parameters() "
            "names (e.g. 'transformer.h.0.*') or head specs ('transformer.h.0.attn:head=1'), "
            "a list of them, or a function (name, parameter) -> bool."
        )
    return [p.strip() for p in patterns]


def select_parameters(model: nn.Module, parameters: ParameterSelection | None) -> dict | None:
    """The parameters ``parameters`` selects: ``{"selection", "names", "num_params",
    "partial"}`` (``names`` in ``named_parameters()`` order, one name per parameter; ``partial``
    maps the names of parameters sampled only in part, by head specs, to their count of sampled
    entries; ``num_params`` counts sampled entries), or ``None`` when ``parameters`` is
    ``None`` (sample what has ``requires_grad=True``).

    Raises:
        ValueError: a pattern that matches no parameter (the message lists some names), a bad
            head spec (see :mod:`hf_llc.attention_heads`), or a selection that is empty.
    """
    return select_with_slices(model, parameters)[0]


def select_with_slices(
    model: nn.Module, parameters: ParameterSelection | None
) -> tuple[dict | None, dict[str, Tensor]]:
    """:func:`select_parameters`'s record, and for each parameter sampled only in part (by a
    head spec, not wholly covered by the heads nor selected whole by a pattern) the sorted flat
    indices of its sampled entries (``name → LongTensor``, on the CPU)."""
    if parameters is None:
        return None, {}
    named = list(model.named_parameters(remove_duplicate=False))
    first_name = parameter_names(model)
    chosen: set[int] = set()
    masks: dict[str, Tensor] = {}
    if callable(parameters) and not isinstance(parameters, str):
        description: Any = getattr(parameters, "__name__", "predicate")
        for name, p in named:
            if parameters(name, p):
                chosen.add(id(p))
    else:
        description = _patterns(parameters)
        for pattern in description:
            if is_head_spec(pattern):
                for name, mask in head_masks(model, pattern).items():
                    masks[name] = masks[name] | mask if name in masks else mask
            else:
                chosen |= _matches(model, named, pattern)
    # A parameter the heads cover entirely (every head of a layer) is sampled whole.
    chosen |= {id(p) for p, name in first_name.items() if name in masks and masks[name].all()}
    whole = [name for p, name in first_name.items() if id(p) in chosen]
    slices = {
        name: mask.reshape(-1).nonzero().reshape(-1)
        for name, mask in masks.items()
        if name not in whole
    }
    names = [name for name in first_name.values() if name in slices or name in whole]
    if not names:
        raise ValueError(
            f"parameters={description!r} selects no parameter of {type(model).__name__}."
        )
    num_params = sum(p.numel() for p, name in first_name.items() if id(p) in chosen)
    num_params += sum(len(index) for index in slices.values())
    record = {
        "selection": description,
        "names": names,
        "num_params": int(num_params),
        "partial": {name: len(index) for name, index in slices.items()},
    }
    return record, slices


def _matches(model: nn.Module, named: list, pattern: str) -> set[int]:
    """The ids of the parameters one glob pattern matches; none is an error."""
    hits = {id(p) for name, p in named if fnmatch.fnmatchcase(name, pattern)}
    if not hits:
        examples = ", ".join(name for name, _ in named[:6])
        raise ValueError(
            f"parameters: the pattern {pattern!r} matches no parameter of "
            f"{type(model).__name__} (names look like: {examples}, …); patterns are "
            "globs over model.named_parameters() names, e.g. 'transformer.h.0.*', or "
            "head specs MODULE:head=I (e.g. 'transformer.h.0.attn:head=1')."
        )
    return hits


@contextmanager
def sampled_only(model: nn.Module, selected: dict | None) -> Iterator[None]:
    """Within the block exactly the ``selected`` parameters (see :func:`select_parameters`)
    have ``requires_grad=True``, so they, and only they, are sampled; afterwards every
    parameter's ``requires_grad`` is what it was. ``None`` changes nothing."""
    if selected is None:
        yield
        return
    names = set(selected["names"])
    before = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(name in names)
        yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)

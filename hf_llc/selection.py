"""Weight-refined LLCs: which of a model's parameters the chains sample.

By default every parameter with ``requires_grad=True`` is sampled. ``parameters=`` (CLI
``--parameters``) chooses them instead, by glob patterns over ``model.named_parameters()``
names (``"transformer.h.0.*"``, ``"*.attn.*"``) or by a predicate ``f(name, parameter) ->
bool``; the other parameters stay at w* throughout, so the estimate is the LLC of the loss as
a function of the chosen weights alone (Wang et al., "refined LLCs", arXiv 2410.02984).

Tied weights (e.g. a language model's output layer sharing the input embedding) are one
parameter reachable under several names: a pattern matching any of the names selects it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

#: What ``parameters=`` accepts: one pattern, several, or a predicate on (name, parameter).
ParameterSelection = str | Sequence[str] | Callable[[str, nn.Parameter], bool]


def _patterns(parameters: Any) -> list[str]:
    patterns = [parameters] if isinstance(parameters, str) else list(parameters)
    if not patterns or not all(isinstance(p, str) and p.strip() for p in patterns):
        raise ValueError(
            f"parameters={parameters!r}: pass glob patterns over model.named_parameters() "
            "names (e.g. 'transformer.h.0.*'), a list of them, or a function (name, "
            "parameter) -> bool."
        )
    return [p.strip() for p in patterns]


def select_parameters(model: nn.Module, parameters: ParameterSelection | None) -> dict | None:
    """The parameters ``parameters`` selects: ``{"selection", "names", "num_params"}``
    (``names`` in ``named_parameters()`` order, one name per parameter), or ``None`` when
    ``parameters`` is ``None`` (sample what has ``requires_grad=True``).

    Raises:
        ValueError: a pattern that matches no parameter (the message lists some names), or a
            selection that is empty.
    """
    if parameters is None:
        return None
    named = list(model.named_parameters(remove_duplicate=False))
    first_name = {}  # parameter -> the name named_parameters() reports it under
    for name, p in model.named_parameters():
        first_name[p] = name
    chosen: set[int] = set()
    if callable(parameters) and not isinstance(parameters, str):
        description: Any = getattr(parameters, "__name__", "predicate")
        for name, p in named:
            if parameters(name, p):
                chosen.add(id(p))
    else:
        description = _patterns(parameters)
        for pattern in description:
            hits = {id(p) for name, p in named if fnmatch.fnmatchcase(name, pattern)}
            if not hits:
                examples = ", ".join(name for name, _ in named[:6])
                raise ValueError(
                    f"parameters: the pattern {pattern!r} matches no parameter of "
                    f"{type(model).__name__} (names look like: {examples}, …); patterns are "
                    "globs over model.named_parameters() names, e.g. 'transformer.h.0.*'."
                )
            chosen |= hits
    names = [name for p, name in first_name.items() if id(p) in chosen]
    if not names:
        raise ValueError(
            f"parameters={description!r} selects no parameter of {type(model).__name__}."
        )
    num_params = sum(p.numel() for p, name in first_name.items() if id(p) in chosen)
    return {"selection": description, "names": names, "num_params": int(num_params)}


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

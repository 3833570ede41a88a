"""Attention heads by index: the weights of one head of an attention layer, for per-head
refined LLCs.

A head spec is a string ``"MODULE:head=I"`` (several heads of one layer: ``"MODULE:head=I+J"``)
naming an attention module of the model (a ``model.named_modules()`` name) and head indices;
:func:`heads` builds one. It selects the head's slices of the layer's projection weights:

* GPT-2 (``GPT2Attention``, fused ``c_attn`` and ``c_proj``, Conv1D weights stored in × out):
  head h's columns of each of the query, key and value thirds of ``c_attn.weight`` and the same
  entries of ``c_attn.bias``, and head h's rows (its inputs) of ``c_proj.weight``.
* Llama-style (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``; Llama, Mistral, Qwen2, …,
  ``nn.Linear`` weights stored out × in): head h's rows of ``q_proj`` (and bias entries), its
  columns of ``o_proj.weight``, and the rows of ``k_proj``/``v_proj`` (and bias entries) of
  its key/value head. With grouped-query attention (fewer key/value heads than query heads)
  query head h reads key/value head h // (num_heads / num_kv_heads), which it shares with the
  other query heads of its group: that key/value head is sampled with it, so the selections of
  heads of one group overlap in those rows.
* BERT (``BertAttention``: ``self.query``/``self.key``/``self.value`` rows and bias entries,
  ``output.dense`` columns).

The output projection's bias (``c_proj.bias``, ``o_proj.bias``, ``output.dense.bias``) is added
once to the sum of all heads' outputs, so it belongs to no head and is not sampled; neither
are layer norms, relative-position tables or other heads' entries of the same matrices, which
stay exactly at w*.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

_SPEC = re.compile(r"^(?P<module>[^:\s]+):head=(?P<heads>\d+(?:\+\d+)*)$")
_FORMAT = "MODULE:head=I, e.g. 'transformer.h.0.attn:head=1' (several heads: 'MODULE:head=0+2')"
_KNOWN = (
    "GPT-2's GPT2Attention (c_attn, c_proj), Llama-style attention (q_proj, k_proj, v_proj, "
    "o_proj) and BERT's BertAttention (self.query/key/value, output.dense)"
)


def heads(module: str, indices: int | Iterable[int]) -> str:
    """The head spec selecting heads ``indices`` of the attention module named ``module``
    (``"transformer.h.0.attn:head=1"``), for ``parameters=`` or CLI ``--parameters``.

    Example: ``estimate_llc(model, data, parameters=heads("transformer.h.0.attn", [1]))``.
    """
    picked = [indices] if isinstance(indices, int) else list(indices)
    if not isinstance(module, str) or not module.strip() or ":" in module:
        raise ValueError(
            f"heads(module={module!r}): pass the name of an attention module, as "
            "model.named_modules() gives it (e.g. 'transformer.h.0.attn')."
        )
    if not picked or not all(isinstance(i, int) and not isinstance(i, bool) for i in picked):
        raise ValueError(f"heads(indices={indices!r}): pass a head index or a list of them.")
    if min(picked) < 0:
        raise ValueError(f"heads(indices={indices!r}): head indices count from 0.")
    return f"{module.strip()}:head=" + "+".join(str(i) for i in sorted(set(picked)))


def is_head_spec(entry: str) -> bool:
    """Whether a ``parameters=`` entry is a head spec (parameter names have no ``:``)."""
    return ":" in entry


def parse_head_spec(spec: str) -> tuple[str, list[int]]:
    """``"MODULE:head=I+J"`` → (``"MODULE"``, [I, J]); a malformed spec raises ValueError."""
    match = _SPEC.match(spec.strip())
    if match is None:
        raise ValueError(f"parameters: {spec!r} is not a head spec; expected {_FORMAT}.")
    return match["module"], sorted({int(i) for i in match["heads"].split("+")})


@dataclass(frozen=True)
class _Piece:
    """Head entries of one parameter: indices ``start:stop`` along ``axis``."""

    param: str  # relative to the attention module
    axis: int
    start: int
    stop: int


@dataclass(frozen=True)
class _Layout:
    """An attention layer's heads: the layout's name, the head count and each head's pieces."""

    kind: str
    num_heads: int
    pieces: Callable[[int], list[_Piece]]


def _with_bias(linear: str, axis_of_weight: int, start: int, stop: int) -> list[_Piece]:
    """The pieces of a projection's output rows (``nn.Linear``, axis 0) or output columns
    (Conv1D, axis 1) and of its bias entries (skipped later when there is no bias)."""
    return [
        _Piece(f"{linear}.weight", axis_of_weight, start, stop),
        _Piece(f"{linear}.bias", 0, start, stop),
    ]


def _gpt2(module: nn.Module, name: str) -> _Layout:
    if getattr(module, "is_cross_attention", False) or hasattr(module, "q_attn"):
        raise ValueError(
            f"parameters: {name} is a GPT-2 cross-attention layer, whose heads hf_llc does not "
            "slice; select a self-attention layer (transformer.h.N.attn) or its parameters by "
            "glob pattern."
        )
    n, d, e = int(module.num_heads), int(module.head_dim), int(module.embed_dim)
    _check_shape(name, "c_attn.weight", module.c_attn.weight, (e, 3 * e))
    _check_shape(name, "c_proj.weight", module.c_proj.weight, (e, e))

    def pieces(h: int) -> list[_Piece]:
        out = []
        for third in range(3):  # query, key, value
            out += _with_bias("c_attn", 1, third * e + h * d, third * e + (h + 1) * d)
        return out + [_Piece("c_proj.weight", 0, h * d, (h + 1) * d)]

    return _Layout("gpt2", n, pieces)


def _llama(module: nn.Module, name: str) -> _Layout:
    config = getattr(module, "config", None)
    d = getattr(module, "head_dim", None) or getattr(config, "head_dim", None)
    if not d:
        raise ValueError(f"parameters: {name} has no head_dim, so its heads cannot be sliced.")
    d = int(d)
    n, n_kv = module.q_proj.weight.shape[0] // d, module.k_proj.weight.shape[0] // d
    hidden = module.q_proj.weight.shape[1]
    _check_shape(name, "q_proj.weight", module.q_proj.weight, (n * d, hidden))
    for proj in ("k_proj", "v_proj"):
        _check_shape(name, f"{proj}.weight", getattr(module, proj).weight, (n_kv * d, hidden))
    o_proj = module.o_proj.weight
    _check_shape(name, "o_proj.weight", o_proj, (o_proj.shape[0], n * d))
    if n_kv == 0 or n % n_kv:
        raise ValueError(
            f"parameters: {name} has {n} query heads and {n_kv} key/value heads, which do not "
            "divide into groups; select its parameters by glob pattern instead."
        )
    group = n // n_kv

    def pieces(h: int) -> list[_Piece]:
        kv = h // group  # the key/value head query head h reads (repeat_kv's order)
        out = _with_bias("q_proj", 0, h * d, (h + 1) * d)
        out += _with_bias("k_proj", 0, kv * d, (kv + 1) * d)
        out += _with_bias("v_proj", 0, kv * d, (kv + 1) * d)
        return out + [_Piece("o_proj.weight", 1, h * d, (h + 1) * d)]

    return _Layout("llama" if group == 1 else "llama-gqa", n, pieces)


def _bert(module: nn.Module, name: str) -> _Layout:
    attention = module.self
    n, d = int(attention.num_attention_heads), int(attention.attention_head_size)
    e = attention.query.weight.shape[1]
    for proj in ("query", "key", "value"):
        _check_shape(name, f"self.{proj}.weight", getattr(attention, proj).weight, (n * d, e))
    _check_shape(name, "output.dense.weight", module.output.dense.weight, (e, n * d))

    def pieces(h: int) -> list[_Piece]:
        out = []
        for proj in ("query", "key", "value"):
            out += _with_bias(f"self.{proj}", 0, h * d, (h + 1) * d)
        return out + [_Piece("output.dense.weight", 1, h * d, (h + 1) * d)]

    return _Layout("bert", n, pieces)


def _check_shape(name: str, param: str, weight: torch.Tensor, expected: tuple) -> None:
    if tuple(weight.shape) != tuple(expected):
        raise ValueError(
            f"parameters: {name}.{param} has shape {tuple(weight.shape)}, not the "
            f"{tuple(expected)} of the head layout hf_llc knows; select its parameters by glob "
            "pattern instead."
        )


def _layout_of(module: nn.Module) -> Callable[[nn.Module, str], _Layout] | None:
    """The layout builder of an attention module hf_llc knows, else ``None``."""
    kids = dict(module.named_children())
    if {"c_attn", "c_proj"} <= kids.keys() and hasattr(module, "num_heads"):
        return _gpt2
    if {"q_proj", "k_proj", "v_proj", "o_proj"} <= kids.keys():
        return _llama
    if {"self", "output"} <= kids.keys() and all(
        hasattr(kids["self"], p) for p in ("query", "key", "value", "num_attention_heads")
    ):
        return _bert
    return None


def parameter_names(model: nn.Module) -> dict[nn.Parameter, str]:
    """Parameter → the name ``named_parameters()`` reports it under (a tied parameter's first)."""
    return {p: name for name, p in model.named_parameters()}


def attention_modules(model: nn.Module) -> list[str]:
    """The names of the model's attention modules whose heads :func:`head_masks` can slice."""
    return [n for n, m in model.named_modules() if n and _layout_of(m) is not None]


def _layout(model: nn.Module, name: str, spec: str) -> _Layout:
    """The layout of the module ``name``; a clear ValueError for a missing or unknown one."""
    known = attention_modules(model)
    examples = ", ".join(known[:4]) + (", …" if len(known) > 4 else "") or "none found"
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"parameters: {spec!r} names no module of {type(model).__name__}; its attention "
            f"modules are: {examples}."
        ) from None
    build = _layout_of(module)
    if build is None:
        parent = name.rsplit(".", 1)[0]
        hint = (
            f" (pass its parent {parent!r}, which holds the output projection too)"
            if all(hasattr(module, p) for p in ("query", "key", "value")) and parent in known
            else ""
        )
        raise ValueError(
            f"parameters: {spec!r}: {name} is a {type(module).__name__}, not an attention "
            f"layer whose heads hf_llc can slice{hint}. Known layouts: {_KNOWN}. Attention "
            f"modules of this model: {examples}; or select parameters by glob pattern."
        )
    return build(module, name)


def head_masks(model: nn.Module, spec: str) -> dict[str, torch.Tensor]:
    """The entries a head spec selects: parameter name (as ``named_parameters()`` reports
    it) → boolean mask of the parameter's shape, ``True`` where sampled.

    Raises:
        ValueError: a malformed spec, a module that is missing or not an attention layer of a
            known layout, or a head index out of range.
    """
    name, picked = parse_head_spec(spec)
    layout = _layout(model, name, spec)
    bad = [h for h in picked if h >= layout.num_heads]
    if bad:
        raise ValueError(
            f"parameters: {spec!r}: head {bad[0]} is out of range; {name} has "
            f"{layout.num_heads} heads, 0 to {layout.num_heads - 1}."
        )
    first_name = parameter_names(model)
    masks: dict[str, torch.Tensor] = {}
    for h in picked:
        for piece in layout.pieces(h):
            try:
                p = model.get_parameter(f"{name}.{piece.param}")
            except AttributeError:
                if piece.param.endswith(".bias"):  # a projection without bias
                    continue
                raise ValueError(
                    f"parameters: {spec!r}: {name}.{piece.param} is not a parameter (a wrapped "
                    "layer, e.g. a PEFT adapter's?), so the head cannot be sliced; select "
                    "parameters by glob pattern instead."
                ) from None
            key = first_name[p]
            mask = masks.setdefault(key, torch.zeros(p.shape, dtype=torch.bool))
            mask.narrow(piece.axis, piece.start, piece.stop - piece.start).fill_(True)
    return masks

"""Record LLC estimates in a Hugging Face model card (README.md).

    from hf_llc.modelcard import write_llc_to_model_card, read_llc_from_model_card
    write_llc_to_model_card("my-model/", result, dataset_name="wikitext",
                            dataset_config="wikitext-2-raw-v1", dataset_split="train")
    read_llc_from_model_card("my-model/")  # -> [{"value": ..., "std": ..., ...}]

What is written, in the card's YAML front matter:

* ``model-index``: one metric per estimate, ``type: llc``, ``name: Local Learning
  Coefficient``, ``value`` = λ̂ (a plain float), under a result whose ``task.type`` is
  ``local-learning-coefficient`` and whose ``dataset`` carries the dataset's name, config and
  split. The metric's ``config`` is the estimate's settings id (a hash of the sampler settings
  and nβ) and its ``args`` hold ``std`` (the spread of λ̂ over chains), ``stderr``, ``nbeta``,
  ``num_samples``, ``num_chains``, ``num_draws`` and ``seed``. All of this round-trips through
  :class:`huggingface_hub.ModelCardData` / :class:`huggingface_hub.EvalResult` (``metric_config``
  and ``metric_args``), and estimates of one dataset/config/split share one result, which is
  how ``ModelCardData`` groups them, so a later ``ModelCard`` save leaves them as they are.
* ``hf_llc``: a list with one entry per estimate holding everything needed to reproduce it:
  the value, std, stderr and per-chain values, the dataset's name/config/split/fingerprint,
  the full sampler settings, nβ, n, the seed, chains × draws, the initial loss, the model
  revision, library versions, the UTC date and a small diagnostics summary (chains used,
  rank-normalized R̂ and bulk/tail ESS, MALA acceptance, number of divergences and restarts,
  the verdict and its reasons, and, for ``step_size="auto"``, the chosen step size with the
  grid it was chosen from).

and in its body, a ``## Local Learning Coefficient`` section (between the HTML comments
``<!-- hf_llc:llc:start -->`` and ``<!-- hf_llc:llc:end -->``) with a table of every recorded
estimate and the trace plots, regenerated from the ``hf_llc`` entries on each write.

An estimate is identified by dataset name + config + split + settings id; writing it again
replaces its entry, anything else adds one. The rest of the card is kept as it was: the YAML
text of every other top-level key (comments and formatting included) and the body outside
the markers are copied byte for byte; only the ``model-index`` and ``hf_llc`` keys are
re-serialised (values of other ``model-index`` results are unchanged, their formatting may be).

``transformers.Trainer.create_model_card()`` (and ``Trainer.push_to_hub()``) rewrite
README.md from scratch, dropping what was recorded here: write the LLC after them.
"""

from __future__ import annotations

import copy
import math
import os
import re
import stat
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard
from huggingface_hub.utils import yaml_dump

from ._text import fmt
from ._version import __version__
from .serialization import atomic_write, check_output_path, settings_hash, to_plain

__all__ = [
    "LLC_CARD_TEMPLATE",
    "LLC_METRIC_TYPE",
    "LLC_TASK_TYPE",
    "check_model_card",
    "read_llc_from_model_card",
    "write_llc_to_model_card",
]

LLC_TASK_TYPE = "local-learning-coefficient"
LLC_TASK_NAME = "Local Learning Coefficient estimation"
LLC_METRIC_TYPE = "llc"
LLC_METRIC_NAME = "Local Learning Coefficient"
METADATA_KEY = "hf_llc"
SECTION_START = "<!-- hf_llc:llc:start -->"
SECTION_END = "<!-- hf_llc:llc:end -->"
_BOM = "\ufeff"  # a UTF-8 byte order mark some editors put before the front matter

# Kept identical to model_cards/llc_card_template.md (a test checks it): installed packages
# cannot rely on the repository folder. ``{model_name}`` is the only placeholder.
LLC_CARD_TEMPLATE = """\
---
library_name: transformers
tags:
- hf_llc
---

# {model_name}

<!-- This card was created by hf_llc because the model had no README.md.
Describe the model, its training data and its intended use here. -->
"""

# The same pattern ModelCard uses to find the front matter.
_YAML_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")
# An empty block ("---" directly followed by "---"), which that pattern does not see: without
# this it would stay in the body, under the new metadata, and render as two rules.
_EMPTY_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))()(---[ \t]*(\r\n|\n|$))")


def write_llc_to_model_card(
    model_dir_or_readme: str | os.PathLike,
    result: Any,
    *,
    dataset_name: str,
    dataset_split: str = "train",
    dataset_config: str | None = None,
    dataset_fingerprint: str | None = None,
    model_name: str | None = None,
    model_revision: str | None = None,
    plot_path: str | os.PathLike | None = None,
    date: str | datetime | None = None,
) -> Path:
    """Record an LLC estimate in a model card's metadata and body; return the card's path.

    Args:
        model_dir_or_readme: a model directory (its ``README.md`` is used) or the path of a
            ``.md`` card. A missing card is created from :data:`LLC_CARD_TEMPLATE`.
        result: an :class:`hf_llc.LLCResult`, or the dict of its ``to_dict()``.
        dataset_name: the dataset's Hub id (or a descriptive name), e.g. ``"wikitext"``.
        dataset_split: the split the estimate used.
        dataset_config: the dataset's config name, if any.
        dataset_fingerprint: e.g. ``datasets.Dataset._fingerprint``, to pin the exact data.
        model_name: the ``model-index`` name and the new card's title when the card has
            none (default: the directory's name). When the card's ``model-index`` lists
            several models it chooses the block to record in (required then; an unknown or
            ambiguous name is refused).
        model_revision: the model's commit/revision the estimate was made on.
        plot_path: a trace plot to link from the card; a path inside the model directory is
            written relative to it (so it renders on the Hub once uploaded with the card), any
            other as its file name only (no local absolute path goes into a card). A local
            ``dataset_name`` (a file or folder) is shown the same way.
        date: override the recorded UTC date (ISO string or datetime); for reproducible
            output in tests.

    Writing the same dataset + config + split + sampler settings again replaces that entry
    (metadata and table row); other metadata keys and body text are left untouched, and a
    UTF-8 byte order mark before the front matter is kept. The file is replaced atomically;
    a symbolic link is written through to its target. ``Trainer.create_model_card()``
    rewrites README.md, so call this after it. Everything that can be checked before
    sampling is checked by :func:`check_model_card`.

    Raises:
        ValueError: the card's YAML metadata (or its LLC section markers) is malformed, the
            card is read-only or not a regular file, ``model_name`` does not choose one
            ``model-index`` block (the file is left untouched), or λ̂ is not finite.
        FileNotFoundError: the model directory does not exist.
    """
    readme = check_model_card(model_dir_or_readme, model_name=model_name, what="model card")

    get = _getter(result)
    value = to_plain(get("llc_mean"))
    if value is None:
        raise ValueError(
            f"cannot record a non-finite LLC ({get('llc_mean')!r}) in {readme}: "
            "every chain diverged? Check result.diagnostics['divergences']."
        )

    bom, original = _read_card(readme)
    if original is None:
        title = model_name or readme.parent.resolve().name or "Model"
        original = LLC_CARD_TEMPLATE.replace("{model_name}", title)
    front, body, data = _parse(original, readme)
    newline = _line_ending(original)
    model_index = copy.deepcopy(data.get("model-index")) or []
    block = _choose_block(model_index, model_name, readme)

    entry = _make_entry(
        get,
        value=value,
        dataset_name=_card_dataset_name(dataset_name, readme.parent),
        dataset_config=dataset_config,
        dataset_split=dataset_split,
        dataset_fingerprint=dataset_fingerprint,
        model_revision=model_revision,
        plot=_plot_link(plot_path, readme.parent),
        date=date,
    )
    if len(model_index) > 1:
        entry["model_name"] = model_index[block].get("name")  # the estimate is of that model

    entries = _entries(data, readme)
    _upsert(entries, entry, _entry_key)
    name = model_name or readme.parent.resolve().name or "model"
    _upsert_model_index(model_index, entry, name, block)

    new_front = _set_top_level_keys(
        front, data, {"model-index": model_index, METADATA_KEY: entries}, newline
    )
    new_body = _set_section(body, _render_section(entries, newline), readme, newline)
    text = f"---{newline}{new_front}{newline}---{newline}{new_body}"

    # Whatever we wrote must load as a model card and give our entries back.
    new_data = _parse(text, readme)[2]
    if new_data.get(METADATA_KEY) != entries:
        raise RuntimeError(f"internal error: the LLC entries of {readme} did not round-trip.")
    # A symlinked README.md is written through to its target; the BOM, if any, is kept.
    atomic_write(readme, (bom + text).encode("utf-8"))
    return readme


def check_model_card(
    model_dir_or_readme: str | os.PathLike,
    *,
    model_name: str | None = None,
    what: str = "model card",
) -> Path:
    """Check, before any work, that :func:`write_llc_to_model_card` can write this card.

    The card (if it exists) must be a regular file (a symbolic link to one is followed),
    writable (a read-only README.md is refused, not replaced), valid UTF-8 with well-formed
    metadata, and, when its ``model-index`` lists several models, ``model_name`` must name
    exactly one of them. ``what`` names the flag or argument in the errors. Returns the
    card's path.

    Raises:
        FileNotFoundError: the model directory does not exist.
        ValueError: anything else above, naming the card and the fix.
    """
    readme = _readme_path(model_dir_or_readme)
    if not readme.parent.is_dir():
        raise FileNotFoundError(f"model directory {readme.parent} does not exist.")
    _, text = _read_card(readme)
    check_output_path(readme, what)
    if text is not None:
        _, _, data = _parse(text, readme)
        _entries(data, readme)
        _choose_block(data.get("model-index") or [], model_name, readme)
    return readme


def _read_card(readme: Path) -> tuple[str, str | None]:
    """(UTF-8 byte order mark or ``""``, the card's text without it, or ``None`` if missing)."""
    try:
        st = os.stat(readme)  # follows a symbolic link
    except (FileNotFoundError, NotADirectoryError):
        return "", None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(
            f"{readme} is not a regular file (a directory, FIFO or device): a model card must "
            "be a regular README.md; move it away or pass another model folder."
        )
    try:
        text = readme.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{readme} is not UTF-8 text ({err}); save the model card as UTF-8."
        ) from err
    if text.startswith(_BOM):
        return _BOM, text[len(_BOM) :]
    return "", text


def _choose_block(model_index: Any, model_name: str | None, readme: Path) -> int | None:
    """The index of the ``model-index`` block to record in (``None``: there is none yet)."""
    if not isinstance(model_index, list) or not model_index:
        return None
    if len(model_index) == 1:
        return 0
    names = [b.get("name") if isinstance(b, dict) else None for b in model_index]
    listed = ", ".join(repr(n) for n in names)
    if model_name is None:
        raise ValueError(
            f"{readme}: model-index lists {len(names)} models ({listed}); pass model_name= "
            "(--card-model-name) to choose the one this estimate is of."
        )
    matches = [i for i, n in enumerate(names) if n == model_name]
    if not matches:
        raise ValueError(
            f"{readme}: model_name={model_name!r} (--card-model-name) is not in its model-index "
            f"(models: {listed}); pass one of those names."
        )
    if len(matches) > 1:
        raise ValueError(
            f"{readme}: model-index lists {len(matches)} models named {model_name!r}, so "
            "model_name cannot choose one; give them distinct names."
        )
    return matches[0]


def read_llc_from_model_card(model_dir_or_readme: str | os.PathLike) -> list[dict]:
    """The LLC entries recorded in a model card (``[]`` if it has none or does not exist).

    Each entry is a dict with ``value`` (λ̂), ``std``, ``stderr``, ``per_chain``,
    ``dataset``, ``dataset_config``, ``dataset_split``, ``dataset_fingerprint``,
    ``settings_id``, ``settings`` (the sampler settings), ``nbeta``, ``num_samples``,
    ``num_params``, ``seed``, ``num_chains``, ``num_draws``, ``num_burnin``, ``init_loss``,
    ``model_revision``, ``versions``, ``date``, ``diagnostics`` and ``plot``.

    Raises:
        ValueError: the card's metadata is malformed.
    """
    readme = _readme_path(model_dir_or_readme)
    _, text = _read_card(readme)
    if text is None:
        return []
    _, _, data = _parse(text, readme)
    return copy.deepcopy(_entries(data, readme))


# --------------------------------------------------------------------------- parsing


def _readme_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() == ".md" and not path.is_dir():
        return path
    return path / "README.md"


def _parse(text: str, readme: Path) -> tuple[str | None, str, dict]:
    """(YAML text or None, body, metadata dict), validated by huggingface_hub's ModelCard."""
    match = _YAML_BLOCK.search(text) or _EMPTY_BLOCK.search(text)
    front, body = (match.group(2), text[match.end() :]) if match else (None, text)
    try:
        data = yaml.safe_load(front) if front is not None else {}
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"the metadata block is a {type(data).__name__}, not a mapping")
        if match:
            ModelCard(text)  # validates model-index the way the Hub tooling reads it
    except (yaml.YAMLError, ValueError, TypeError, AttributeError) as error:
        # TypeError/AttributeError: huggingface_hub chokes on a value (e.g. ``tags: 0``).
        raise ValueError(
            f"{readme}: malformed model card metadata: {error}. Fix the YAML between the "
            "leading '---' lines (the file was left unchanged)."
        ) from error
    return front, body, data


def _entries(data: dict, readme: Path) -> list[dict]:
    entries = data.get(METADATA_KEY) or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(
            f"{readme}: malformed model card metadata: '{METADATA_KEY}' must be a list of mappings."
        )
    return entries


def _line_ending(text: str) -> str:
    match = re.search(r"\r\n|\r|\n", text)
    return match.group(0) if match else "\n"


# --------------------------------------------------------------------------- entries


def _getter(result: Any):
    if isinstance(result, Mapping):
        return result.get
    return lambda key: getattr(result, key, None)


def _make_entry(
    get,
    *,
    value,
    dataset_name,
    dataset_config,
    dataset_split,
    dataset_fingerprint,
    model_revision,
    plot,
    date,
) -> dict:
    settings = to_plain(dict(get("config") or {}))
    nbeta = to_plain(get("nbeta"))
    settings_id = _settings_id(settings, nbeta)
    per_chain = to_plain(list(get("llc_per_chain") or []))
    return {
        "value": value,
        "std": to_plain(get("llc_std")),
        "stderr": to_plain(get("llc_stderr")),
        "per_chain": per_chain,
        "paired_value": to_plain(get("llc_paired_mean")),
        "dataset": dataset_name,
        "dataset_config": dataset_config,
        "dataset_split": dataset_split,
        "dataset_fingerprint": dataset_fingerprint,
        "settings_id": settings_id,
        "settings": settings,
        "nbeta": nbeta,
        "num_samples": to_plain(get("num_samples")),
        "num_params": to_plain(get("num_params")),
        "seed": settings.get("seed"),
        "num_chains": settings.get("num_chains", len(per_chain)),
        "num_draws": settings.get("num_draws"),
        "num_burnin": settings.get("num_burnin"),
        "init_loss": to_plain(get("init_loss")),
        "model_revision": model_revision,
        "versions": _versions(),
        "date": _date(date),
        "diagnostics": _diagnostics_summary(get("diagnostics") or {}),
        "sampling_seconds": to_plain((get("timings") or {}).get("sampling_seconds")),
        "plot": plot,
    }


def _settings_id(settings: dict, nbeta: Any) -> str:
    return "sgld-" + settings_hash({"settings": settings, "nbeta": nbeta}, length=12)


def _entry_key(entry: Mapping) -> tuple:
    return (
        entry.get("model_name"),  # only set when the card's model-index lists several models
        entry.get("dataset"),
        entry.get("dataset_config"),
        entry.get("dataset_split"),
        entry.get("settings_id"),
    )


def _upsert(items: list, item: Any, key) -> None:
    for i, old in enumerate(items):
        if key(old) == key(item):
            items[i] = item
            return
    items.append(item)


def _diagnostics_summary(diag: Mapping) -> dict:
    divergences = diag.get("divergences") or []
    retries = diag.get("retries") or []
    out = {
        "num_chains_used": to_plain(diag.get("num_chains_used")),
        "mala_acceptance": to_plain(diag.get("mala_acceptance")),
        "num_divergences": len(divergences) if isinstance(divergences, (list, tuple)) else 0,
        "num_retries": len(retries) if isinstance(retries, (list, tuple)) else 0,
    }
    # Convergence statistics are copied under the names the result gives them; a result
    # without a verdict or a calibration simply has no such keys.
    for key in ("rhat_rank", "ess_bulk", "ess_tail", "rhat", "ess"):
        if key in diag:
            out[key] = to_plain(diag.get(key))
    verdict = diag.get("verdict")
    if isinstance(verdict, Mapping):
        out["verdict"] = verdict.get("verdict")
        out["verdict_reasons"] = to_plain(list(verdict.get("reasons") or []))
    calibration = diag.get("calibration")
    if isinstance(calibration, Mapping):
        out["step_size_calibration"] = _calibration_summary(calibration)
    return out


def _calibration_summary(calibration: Mapping) -> dict:
    """The chosen ε and the grid it was chosen from (the full sweep stays in the JSON)."""
    return to_plain(
        {
            "chosen_step_size": calibration.get("chosen_step_size"),
            "reason": calibration.get("reason"),
            "grid": [row.get("step_size") for row in calibration.get("sweep") or []],
        }
    )


def _versions() -> dict:
    out = {}
    for name, dist in (
        ("hf_llc", "hf-llc"),
        ("torch", "torch"),
        ("transformers", "transformers"),
        ("huggingface_hub", "huggingface_hub"),
    ):
        try:
            out[name] = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            out[name] = None
    if out["hf_llc"] is None:
        out["hf_llc"] = __version__
    return out


def _date(date: str | datetime | None) -> str:
    if isinstance(date, str):
        return date
    date = date or datetime.now(timezone.utc)
    if date.tzinfo is not None:
        date = date.astimezone(timezone.utc)
    return date.replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def _card_link(path: str | os.PathLike, card_dir: Path) -> str:
    """A local path as a card may show it: relative to the card's folder when inside it, else
    the file's name (an absolute path of this machine means nothing on the Hub)."""
    local = Path(path).expanduser()
    try:
        return local.resolve().relative_to(card_dir.resolve()).as_posix()
    except ValueError:
        return local.name


def _plot_link(plot_path: str | os.PathLike | None, card_dir: Path) -> str | None:
    if plot_path is None:
        return None
    return _card_link(plot_path, card_dir)


def _card_dataset_name(name: str, card_dir: Path) -> str:
    """A Hub dataset id as given; a local file or folder (absolute, or one that exists) as
    :func:`_card_link` shows it."""
    text = str(name)
    expanded = os.path.expanduser(text)
    if os.path.isabs(expanded) or os.path.exists(expanded):
        return _card_link(expanded, card_dir)
    return text


# --------------------------------------------------------------------------- model-index


def _metric(entry: dict) -> dict:
    args = {
        "std": entry["std"],
        "stderr": entry["stderr"],
        "nbeta": entry["nbeta"],
        "num_samples": entry["num_samples"],
        "num_chains": entry["num_chains"],
        "num_draws": entry["num_draws"],
        "seed": entry["seed"],
    }
    return {
        "type": LLC_METRIC_TYPE,
        "value": entry["value"],
        "name": LLC_METRIC_NAME,
        "config": entry["settings_id"],
        "args": {k: v for k, v in args.items() if v is not None},
    }


def _upsert_model_index(
    model_index: list, entry: dict, model_name: str, block: int | None = None
) -> None:
    """Put the entry's metric under the (LLC task, dataset, config, split) result of the
    ``model-index`` block ``block`` (see :func:`_choose_block`; ``None``: a new block)."""
    dataset = {
        "name": entry["dataset"],
        "type": entry["dataset"],
        "config": entry["dataset_config"],
        "split": entry["dataset_split"],
    }
    dataset = {k: v for k, v in dataset.items() if v is not None}
    metric = _metric(entry)
    if block is None:
        model_index.append({"name": model_name, "results": []})
        block = len(model_index) - 1
    results = model_index[block].setdefault("results", [])
    for res in results:
        task, ds = res.get("task") or {}, res.get("dataset") or {}
        same = (
            task.get("type") == LLC_TASK_TYPE
            and ds.get("type") == dataset["type"]
            and ds.get("config") == entry["dataset_config"]
            and ds.get("split") == entry["dataset_split"]
            and ds.get("revision") is None
        )
        if same:
            metrics = res.setdefault("metrics", [])
            _upsert(metrics, metric, lambda m: (m.get("type"), m.get("config")))
            return
    results.append(
        {
            "task": {"type": LLC_TASK_TYPE, "name": LLC_TASK_NAME},
            "dataset": dataset,
            "metrics": [metric],
        }
    )


# --------------------------------------------------------------------------- YAML splicing


def _dump(key: str, value: Any, newline: str) -> str:
    return yaml_dump({key: value}, sort_keys=False, line_break=newline).rstrip("\r\n")


def _set_top_level_keys(front: str | None, data: dict, updates: dict, newline: str) -> str:
    """The YAML text with ``updates`` set, every other top-level key's text kept verbatim.

    Each updated key's text span (found with ``yaml.compose``) is replaced in place, or the
    key is appended. Should the spliced text not re-parse to exactly the intended values
    (exotic YAML such as a flow-style top-level mapping), the whole block is dumped instead,
    in its original key order, which keeps every value but not the formatting.
    """
    expected = dict(data)
    expected.update(updates)
    if front is not None and front.strip():
        try:
            spliced = _splice(front, updates, newline)
            if yaml.safe_load(spliced) == expected:
                return spliced
        except yaml.YAMLError:
            pass
    return yaml_dump(expected, sort_keys=False, line_break=newline).rstrip("\r\n")


def _splice(front: str, updates: dict, newline: str) -> str:
    root = yaml.compose(front)
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        raise yaml.YAMLError("not a block mapping")
    spans = {}
    for key_node, value_node in root.value:
        if key_node.start_mark.column != 0:
            raise yaml.YAMLError("indented top-level mapping")
        start = key_node.start_mark.index
        end = value_node.end_mark.index
        if value_node.end_mark.column != 0:  # ends mid-line: take the rest of the line
            eol = re.compile(r"\r\n|\r|\n").search(front, end)
            end = eol.end() if eol else len(front)
        # A block collection's span runs up to the next key, over any comment or blank
        # lines before it: leave those where they are.
        lines = front[start:end].splitlines(keepends=True)
        while len(lines) > 1 and (not lines[-1].strip() or lines[-1].lstrip().startswith("#")):
            lines.pop()
        spans[key_node.value] = (start, start + len("".join(lines)))
    text = front
    appended = []
    for key in sorted(updates, key=lambda k: -spans.get(k, (-1, -1))[0]):
        block = _dump(key, updates[key], newline)
        if key in spans:
            start, end = spans[key]
            tail = newline if text[start:end].endswith(("\n", "\r")) else ""
            text = text[:start] + block + tail + text[end:]
        else:
            appended.append(block)
    for block in appended:
        text = text.rstrip("\r\n") + newline + block
    return text


# --------------------------------------------------------------------------- body section


def _cell(value: Any, spec: str = ".4g") -> str:
    """A cell of the card's table: a finite float by :func:`~hf_llc._text.fmt`, "–" for none,
    anything else (text, integers exactly, a hand-written ``.nan``) as its ``str``."""
    if value is None or (isinstance(value, float) and math.isfinite(value)):
        return fmt(value, spec, missing="–")
    return str(value)


def _render_section(entries: list[dict], newline: str) -> str:
    lines = [
        SECTION_START,
        "## Local Learning Coefficient",
        "",
        "The local learning coefficient λ̂ (LLC) of these weights, estimated with SGLD by "
        "hf_llc. ± is the standard deviation over chains; the full settings of each "
        f"estimate are in the `{METADATA_KEY}` entries of this card's metadata.",
        "",
        "| Dataset | Config | Split | λ̂ | ± std | stderr | nβ | n | chains × draws | seed "
        "| settings | date |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        chains_draws = f"{_cell(e.get('num_chains'))} × {_cell(e.get('num_draws'))}"
        row = [
            _cell(e.get("dataset")),
            _cell(e.get("dataset_config")),
            _cell(e.get("dataset_split")),
            _cell(e.get("value")),
            _cell(e.get("std"), ".3g"),
            _cell(e.get("stderr"), ".3g"),
            _cell(e.get("nbeta")),
            _cell(e.get("num_samples")),
            chains_draws,
            _cell(e.get("seed")),
            f"`{_cell(e.get('settings_id'))}`",
            _cell(e.get("date")),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    plots = [e for e in entries if e.get("plot")]
    for e in plots:
        label = "/".join(
            str(x) for x in (e.get("dataset"), e.get("dataset_config"), e.get("dataset_split")) if x
        )
        lines += ["", f"![LLC trace: {label} ({e.get('settings_id')})]({e['plot']})"]
    lines.append(SECTION_END)
    return newline.join(lines)


def _set_section(body: str, section: str, readme: Path, newline: str) -> str:
    starts, ends = body.count(SECTION_START), body.count(SECTION_END)
    if starts == 0 and ends == 0:
        if body and not body.endswith(("\n", "\r")):
            body += newline
        return body + newline + section + newline
    start, end = body.find(SECTION_START), body.find(SECTION_END)
    if starts != 1 or ends != 1 or end < start:
        raise ValueError(
            f"{readme}: malformed LLC section: expected one '{SECTION_START}' followed by one "
            f"'{SECTION_END}', found {starts} and {ends}; fix or remove them by hand."
        )
    return body[:start] + section + body[end + len(SECTION_END) :]

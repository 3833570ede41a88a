"""Record LLC estimates in a Hugging Face model card (README.md), locally or on the Hub.

    from hf_llc.modelcard import write_llc_to_model_card, read_llc_from_model_card
    write_llc_to_model_card("my-model/", result, dataset_name="wikitext",
                            dataset_config="wikitext-2-raw-v1", dataset_split="train")
    read_llc_from_model_card("my-model/")  # -> [{"value": ..., "std": ..., ...}]

    from hf_llc import push_llc_to_hub
    push_llc_to_hub("user/my-model", result, dataset_name="wikitext")  # opens a pull request

What is written, in the card's YAML front matter:

* ``model-index``: one metric per estimate, ``type: llc``, ``name: Local Learning
  Coefficient``, ``value`` = λ̂ (a plain float), under a result whose ``task.type`` is
  ``local-learning-coefficient`` and whose ``dataset`` carries the dataset's name, config,
  split and revision (``dataset.type`` is the Hub id, or a local dataset's file name). The
  metric's ``config`` is the estimate's settings id (a hash of the sampler settings and nβ)
  and its ``args`` hold ``std`` (the spread of λ̂ over chains), ``stderr``, ``nbeta``,
  ``num_samples``, ``num_chains``, ``num_draws`` and ``seed``. The entry is a
  :class:`huggingface_hub.EvalResult` (:func:`llc_eval_result`), merged with the LLC results
  already in the card by huggingface_hub's ``model_index_to_eval_results`` /
  ``eval_results_to_model_index``, so estimates of one dataset/config/split/revision share one
  result, as ``ModelCardData`` groups them, and a later ``ModelCard`` save leaves them as
  they are.
* ``hf_llc``: a list with one entry per estimate holding everything needed to reproduce it:
  the value, std, stderr and per-chain values, the dataset's
  name/config/split/revision/fingerprint, the full sampler settings, nβ, n, the seed,
  chains × draws, the initial loss, the model revision, library versions, the UTC date, a
  small diagnostics summary (chains used, rank-normalized R̂ and bulk/tail ESS, MALA
  acceptance, number of divergences and restarts, the verdict and its reasons, and, for
  ``step_size="auto"``, the chosen step size with the grid it was chosen from) and, for the
  LLC of a PEFT adapter, the ``adapter`` the result records (type, base model, rank, …).

and in its body, a ``## Local Learning Coefficient`` section (between the HTML comments
``<!-- hf_llc:llc:start -->`` and ``<!-- hf_llc:llc:end -->``) with a table of every recorded
estimate and the trace plots, regenerated from the ``hf_llc`` entries on each write.

The dataset is the one given (``dataset_name=`` …), else the one the result records in
``diagnostics["data"]["dataset"]``. An estimate is identified by dataset name + config +
split + revision + settings id; writing it again replaces its entry, anything else adds one.
The rest of the card is kept as it was: the YAML text of every other top-level key (comments
and formatting included) and the body outside the markers are copied byte for byte; only the
``model-index`` and ``hf_llc`` keys are re-serialised (results of other tasks keep their
values and place, their formatting may change).

:func:`update_llc_card_text` does all of this on a string; :func:`write_llc_to_model_card`
applies it to a local file, :func:`push_llc_to_hub` to a Hub repo's README.md (one commit,
a pull request by default; :func:`check_hub_model_card` is its pre-flight). The Hub functions
are tested offline only, against a mocked ``huggingface_hub.HfApi``.

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
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard
from huggingface_hub.errors import (
    HFValidationError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results
from huggingface_hub.utils import validate_repo_id, yaml_dump

from ._text import fmt
from ._version import __version__
from .sampling.config import chain_settings
from .serialization import (
    atomic_write,
    check_format,
    check_output_path,
    settings_hash,
    to_plain,
)

__all__ = [
    "LLC_CARD_TEMPLATE",
    "LLC_METRIC_TYPE",
    "LLC_TASK_TYPE",
    "check_hub_model_card",
    "check_model_card",
    "llc_eval_result",
    "push_llc_to_hub",
    "read_llc_from_model_card",
    "update_llc_card_text",
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
    dataset_name: str | None = None,
    dataset_split: str | None = None,
    dataset_config: str | None = None,
    dataset_revision: str | None = None,
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
            Default: the dataset the result records (``result.diagnostics["data"]["dataset"]``,
            when the estimate was made on a Hub dataset); one of the two is required.
        dataset_split: the split the estimate used (default: the recorded one, else
            ``"train"``).
        dataset_config: the dataset's config name, if any (default: the recorded one).
        dataset_revision: the dataset's commit/revision (default: the recorded one); estimates
            on different revisions are different entries.
        dataset_fingerprint: e.g. ``datasets.Dataset._fingerprint``, to pin the exact data.
        model_name: the ``model-index`` name and the new card's title when the card has
            none (default: the directory's name). When the card's ``model-index`` lists
            several models it chooses the block to record in (required then; an unknown or
            ambiguous name is refused).
        model_revision: the model's commit/revision the estimate was made on.
        plot_path: a trace plot to link from the card; a path inside the model directory is
            written relative to it (so it renders on the Hub once uploaded with the card), any
            other as its file name only (no local absolute path goes into a card). A local
            ``dataset_name`` (a file or folder) is shown the same way, and its ``model-index``
            ``dataset.type`` is its file name (never a local path).
        date: override the recorded UTC date (ISO string or datetime); for reproducible
            output in tests.

    Writing the same dataset + config + split + revision + sampler settings again replaces
    that entry (metadata and table row); other metadata keys and body text are left untouched,
    and a UTF-8 byte order mark before the front matter is kept. The file is replaced
    atomically; a symbolic link is written through to its target. ``Trainer.create_model_card()``
    rewrites README.md, so call this after it. Everything that can be checked before
    sampling is checked by :func:`check_model_card`. The text itself is made by
    :func:`update_llc_card_text`.

    Raises:
        ValueError: the card's YAML metadata (or its LLC section markers) is malformed, the
            card is read-only or not a regular file, ``model_name`` does not choose one
            ``model-index`` block (the file is left untouched), λ̂ is not finite, or no
            dataset name is given or recorded.
        FileNotFoundError: the model directory does not exist.
    """
    readme = check_model_card(model_dir_or_readme, model_name=model_name, what="model card")
    bom, original = _read_card(readme)
    folder_name = readme.parent.resolve().name
    if original is None:
        original = LLC_CARD_TEMPLATE.replace("{model_name}", model_name or folder_name or "Model")
    text = update_llc_card_text(
        bom + original,
        result,
        dataset_name=dataset_name,
        dataset_split=dataset_split,
        dataset_config=dataset_config,
        dataset_revision=dataset_revision,
        dataset_fingerprint=dataset_fingerprint,
        model_name=model_name,
        model_revision=model_revision,
        plot_path=plot_path,
        date=date,
        card_dir=readme.parent,
        default_model_name=folder_name or "model",
        source=readme,
    )
    # A symlinked README.md is written through to its target.
    atomic_write(readme, text.encode("utf-8"))
    return readme


def update_llc_card_text(
    text: str | None,
    result: Any,
    *,
    dataset_name: str | None = None,
    dataset_split: str | None = None,
    dataset_config: str | None = None,
    dataset_revision: str | None = None,
    dataset_fingerprint: str | None = None,
    model_name: str | None = None,
    model_revision: str | None = None,
    plot_path: str | os.PathLike | None = None,
    date: str | datetime | None = None,
    card_dir: str | os.PathLike | None = None,
    default_model_name: str = "model",
    source: str | os.PathLike = "README.md",
) -> str:
    """The text of a model card with an LLC estimate recorded in it (no file is touched).

    The pure core of :func:`write_llc_to_model_card` and :func:`push_llc_to_hub`: ``text`` is
    the card's current text (``None``: a new card from :data:`LLC_CARD_TEMPLATE`), the other
    arguments are theirs. The ``model-index`` entry is :func:`llc_eval_result`'s, merged with
    the LLC results already there through huggingface_hub's
    :func:`~huggingface_hub.repocard_data.model_index_to_eval_results` and
    :func:`~huggingface_hub.repocard_data.eval_results_to_model_index`; results of other tasks
    keep their values and place. Every other metadata key's YAML text and the body outside the
    LLC section are kept byte for byte, as is a UTF-8 byte order mark.

    Args:
        card_dir: the folder the card lives in, to show local paths (``plot_path``, a local
            dataset) relative to it; ``None`` (a card on the Hub): ``plot_path`` is written as
            given when relative (the file's path in the repository), as its file name when
            absolute.
        default_model_name: the ``model-index`` name when ``model_name`` is not given and the
            card has no ``model-index`` yet (and the new card's title).
        source: what the errors call the card.

    Raises:
        ValueError: as :func:`write_llc_to_model_card`.
    """
    bom = ""
    if text is None:
        text = LLC_CARD_TEMPLATE.replace("{model_name}", model_name or default_model_name)
    elif text.startswith(_BOM):
        bom, text = _BOM, text[len(_BOM) :]
    get = _getter(result)
    value = to_plain(get("llc_mean"))
    if value is None:
        raise ValueError(
            f"cannot record a non-finite LLC ({get('llc_mean')!r}) in {source}: "
            "every chain diverged? Check result.diagnostics['divergences']."
        )
    folder = Path(card_dir) if card_dir is not None else None
    front, body, data = _parse(text, source)
    newline = _line_ending(text)
    model_index = copy.deepcopy(data.get("model-index")) or []
    block = _choose_block(model_index, model_name, source)

    entry, dataset_type = _entry_for(
        get,
        value=value,
        dataset_name=dataset_name,
        dataset_split=dataset_split,
        dataset_config=dataset_config,
        dataset_revision=dataset_revision,
        dataset_fingerprint=dataset_fingerprint,
        model_revision=model_revision,
        plot=_plot_link(plot_path, folder),
        date=date,
        card_dir=folder,
        source=source,
    )
    if len(model_index) > 1:
        entry["model_name"] = model_index[block].get("name")  # the estimate is of that model

    entries = _entries(data, source)
    _upsert(entries, entry, _entry_key)
    evaluation = _eval_result(entry, dataset_type)
    _merge_model_index(model_index, evaluation, model_name or default_model_name, block)

    new_front = _set_top_level_keys(
        front, data, {"model-index": model_index, METADATA_KEY: entries}, newline
    )
    new_body = _set_section(body, _render_section(entries, newline), source, newline)
    out = f"---{newline}{new_front}{newline}---{newline}{new_body}"

    # Whatever we wrote must load as a model card and give our entries back.
    new_data = _parse(out, source)[2]
    if new_data.get(METADATA_KEY) != entries:
        raise RuntimeError(f"internal error: the LLC entries of {source} did not round-trip.")
    return bom + out


def llc_eval_result(
    result: Any,
    *,
    dataset_name: str | None = None,
    dataset_split: str | None = None,
    dataset_config: str | None = None,
    dataset_revision: str | None = None,
) -> EvalResult:
    """The ``model-index`` entry of an estimate as a :class:`huggingface_hub.EvalResult`.

    ``task_type`` is :data:`LLC_TASK_TYPE`, ``metric_type`` :data:`LLC_METRIC_TYPE`,
    ``metric_value`` λ̂, ``metric_config`` the estimate's settings id and ``metric_args`` its
    std, stderr, nβ, n, chains, draws and seed. The dataset arguments default to what the
    result records, as in :func:`write_llc_to_model_card`; a local dataset path gives its file
    name as ``dataset_type``. Pass it to ``huggingface_hub.ModelCardData(eval_results=...)``
    to build a card with huggingface_hub alone.

    Raises:
        ValueError: λ̂ is not finite, or no dataset name is given or recorded.
    """
    get = _getter(result)
    value = to_plain(get("llc_mean"))
    if value is None:
        raise ValueError(f"cannot make a model-index entry of a non-finite LLC ({value!r}).")
    entry, dataset_type = _entry_for(
        get,
        value=value,
        dataset_name=dataset_name,
        dataset_split=dataset_split,
        dataset_config=dataset_config,
        dataset_revision=dataset_revision,
        dataset_fingerprint=None,
        model_revision=None,
        plot=None,
        date=None,
        card_dir=None,
        source="the model-index entry",
    )
    return _eval_result(entry, dataset_type)


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


def _choose_block(
    model_index: Any, model_name: str | None, readme: str | os.PathLike
) -> int | None:
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


def read_llc_from_model_card(
    model: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
) -> list[dict]:
    """The LLC entries recorded in a model card (``[]`` if it has none or does not exist).

    ``model`` is a local model folder or ``.md`` card, or a Hub model repo id
    (``"user/model"``), whose README.md (at ``revision``, with ``token`` for a private or
    gated repo) is downloaded through huggingface_hub. A path that exists locally is always
    read locally; a name that is not a valid repo id is read as a local path.

    Each entry is a dict with ``value`` (λ̂), ``std``, ``stderr``, ``per_chain``,
    ``dataset``, ``dataset_config``, ``dataset_split``, ``dataset_revision``,
    ``dataset_fingerprint``, ``settings_id``, ``settings`` (the sampler settings), ``nbeta``,
    ``num_samples``, ``num_params``, ``seed``, ``num_chains``, ``num_draws``, ``num_burnin``,
    ``init_loss``, ``model_revision``, ``versions``, ``date``, ``diagnostics`` and ``plot``,
    and ``adapter`` for the LLC of a PEFT adapter (entries written by older versions lack the
    newer keys).

    Raises:
        ValueError: the card's metadata is malformed, or the Hub repo (or revision) cannot be
            reached.
    """
    if _is_hub_repo(model):
        repo_id = str(model)
        source = _hub_source(repo_id, revision)
        text = _download_card(HfApi(token=token), repo_id, revision, source)
        if text is None:
            return []
        if text.startswith(_BOM):
            text = text[len(_BOM) :]
    else:
        if revision is not None:
            raise ValueError(
                f"revision={revision!r} is for a Hub repo id, but {model} is a local path."
            )
        source = _readme_path(model)
        text = _read_card(source)[1]
        if text is None:
            return []
    _, _, data = _parse(text, source)
    return copy.deepcopy(_entries(data, source))


def check_hub_model_card(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    model_name: str | None = None,
) -> str:
    """Check, before sampling, that :func:`push_llc_to_hub` can record in this Hub repo.

    The repo (at ``revision``) must be reachable with ``token`` (or the saved login), a token
    must be available at all (a commit needs one), and its README.md, when there is one, must
    be valid UTF-8 with well-formed metadata whose ``model-index`` ``model_name`` can choose
    a block of (as :func:`check_model_card` checks a local card). Write access is not
    checked: with ``create_pr=True`` (the default of :func:`push_llc_to_hub`) a pull request
    needs none. Returns the commit sha the card was read at.

    Only the offline parts of this (a mocked ``HfApi``) are tested in hf_llc's test suite;
    the requests to the Hub itself are huggingface_hub's.

    Raises:
        ValueError: naming the repo and the fix.
    """
    api = HfApi(token=token)
    if token is False or (token is None and _saved_token() is None):
        raise ValueError(
            f"pushing to {repo_id} needs a Hugging Face token: log in (hf auth login), set "
            "HF_TOKEN, or pass token= (--hub-token)."
        )
    sha, text = _fetch_hub_card(api, repo_id, revision)
    if text is not None:
        source = _hub_source(repo_id, revision)
        _, _, data = _parse(text[len(_BOM) :] if text.startswith(_BOM) else text, source)
        _entries(data, source)
        _choose_block(data.get("model-index") or [], model_name, source)
    return sha


def push_llc_to_hub(
    repo_id: str,
    result: Any,
    *,
    dataset_name: str | None = None,
    dataset_split: str | None = None,
    dataset_config: str | None = None,
    dataset_revision: str | None = None,
    dataset_fingerprint: str | None = None,
    model_name: str | None = None,
    model_revision: str | None = None,
    plot_path: str | os.PathLike | None = None,
    plot_path_in_repo: str | None = None,
    revision: str | None = None,
    create_pr: bool = True,
    token: str | bool | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    date: str | datetime | None = None,
):
    """Record an LLC estimate in a Hub model repo's README.md, as a pull request by default.

    The repo's current README.md (at ``revision``; a repo without one gets a new card from
    :data:`LLC_CARD_TEMPLATE`) is updated by :func:`update_llc_card_text`, exactly as
    :func:`write_llc_to_model_card` updates a local card, and committed with
    ``HfApi.create_commit`` together with the trace plot ``plot_path`` when given (uploaded
    to ``plot_path_in_repo``, default its file name, and linked from the card). The commit's
    parent is the commit the card was read at, so a card changed in between is not
    overwritten.

    Args:
        repo_id: the model repo, e.g. ``"user/model"``.
        result, dataset_*, model_name, model_revision, date: as
            :func:`write_llc_to_model_card` (``model_name`` defaults to the repo's name).
        plot_path: a local image file to upload and link from the card.
        plot_path_in_repo: where the plot goes in the repo (default: its file name).
        revision: the branch to read the card from and commit to (default ``main``); with
            ``create_pr=True``, the branch the pull request is opened against.
        create_pr: open a pull request (the default: the owner reviews it) instead of
            committing to ``revision`` directly (needs write access).
        token: a Hub token (default: the saved login or ``HF_TOKEN``).
        commit_message, commit_description: default: a message naming the estimate.

    Returns:
        huggingface_hub's ``CommitInfo`` (a ``str``, the commit's URL); its ``pr_url`` is
        the pull request's URL when ``create_pr``.

    Call :func:`check_hub_model_card` before sampling to find a missing login, a wrong repo
    id or a malformed card early. Status: the composed commit (files, bytes, arguments) is
    tested offline against a mocked ``HfApi``; the live Hub round trip is not exercised by
    hf_llc's tests.

    Raises:
        ValueError: as :func:`write_llc_to_model_card`, or the repo (or revision) cannot be
            reached; errors of the commit itself are huggingface_hub's.
    """
    if plot_path is not None and not Path(plot_path).is_file():
        raise ValueError(f"plot_path {plot_path} is not a file; write the plot first.")
    api = HfApi(token=token)
    sha, text = _fetch_hub_card(api, repo_id, revision)
    in_repo = None
    if plot_path is not None:
        in_repo = (plot_path_in_repo or Path(plot_path).name).lstrip("/")
    new_text = update_llc_card_text(
        text,
        result,
        dataset_name=dataset_name,
        dataset_split=dataset_split,
        dataset_config=dataset_config,
        dataset_revision=dataset_revision,
        dataset_fingerprint=dataset_fingerprint,
        model_name=model_name,
        model_revision=model_revision,
        plot_path=in_repo,
        date=date,
        card_dir=None,
        default_model_name=repo_id.split("/")[-1],
        source=_hub_source(repo_id, revision),
    )
    operations = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=new_text.encode())]
    if plot_path is not None:
        operations.append(
            CommitOperationAdd(path_in_repo=in_repo, path_or_fileobj=str(Path(plot_path)))
        )
    if commit_message is None:
        get = _getter(result)
        name = dataset_name or _recorded_dataset(get).get("name")
        commit_message = (
            f"Record the local learning coefficient on {_card_dataset_name(name, None)} "
            f"(λ̂ = {to_plain(get('llc_mean')):.4g}, hf_llc)"
        )
    return api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message,
        commit_description=commit_description or _commit_description(),
        revision=revision,
        create_pr=create_pr,
        parent_commit=sha,
    )


def _commit_description() -> str:
    return f"Written by hf_llc {__version__} (push_llc_to_hub)."


def _saved_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def _is_hub_repo(model: str | os.PathLike) -> bool:
    """A Hub repo id: not an existing local path, not a ``.md`` file, a valid repo id."""
    if not isinstance(model, str) or os.path.exists(model) or model.lower().endswith(".md"):
        return False
    if model.startswith((".", "~", "/")) or os.sep != "/" and os.sep in model:
        return False
    try:
        validate_repo_id(model)
    except HFValidationError:
        return False
    return True


def _hub_source(repo_id: str, revision: str | None) -> str:
    """How errors name a Hub card."""
    return f"README.md of {repo_id}" + (f" (revision {revision})" if revision else "")


def _hub_error(repo_id: str, revision: str | None, err: Exception) -> ValueError:
    if isinstance(err, RevisionNotFoundError):
        fix = f"revision {revision!r} does not exist there; pass an existing branch or commit"
    elif isinstance(err, RepositoryNotFoundError):  # also gated repos and missing logins
        fix = (
            "check the repo id, and for a private or gated repo your login (hf auth login, "
            "HF_TOKEN or token=)"
        )
    elif isinstance(err, OfflineModeIsEnabled):
        fix = "HF_HUB_OFFLINE is set; unset it to reach the Hub"
    else:
        fix = "check the repo id and your connection"
    return ValueError(f"cannot read Hub model repo {repo_id}: {type(err).__name__}: {fix}.")


def _fetch_hub_card(api, repo_id: str, revision: str | None) -> tuple[str, str | None]:
    """(the commit sha at ``revision``, README.md's text there or ``None`` without one)."""
    try:
        sha = api.model_info(repo_id, revision=revision).sha
    except (RepositoryNotFoundError, RevisionNotFoundError, OfflineModeIsEnabled) as err:
        raise _hub_error(repo_id, revision, err) from err
    return sha, _download_card(api, repo_id, sha, _hub_source(repo_id, revision))


def _download_card(api, repo_id: str, revision: str | None, source: str) -> str | None:
    """README.md's text at ``revision`` (``None``: the repo has none)."""
    try:
        path = api.hf_hub_download(repo_id, "README.md", revision=revision)
    except RemoteEntryNotFoundError:
        return None
    except (RepositoryNotFoundError, RevisionNotFoundError, OfflineModeIsEnabled) as err:
        raise _hub_error(repo_id, revision, err) from err
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source} is not UTF-8 text ({err}); save it as UTF-8.") from err


# --------------------------------------------------------------------------- parsing


def _readme_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() == ".md" and not path.is_dir():
        return path
    return path / "README.md"


def _parse(text: str, readme: str | os.PathLike) -> tuple[str | None, str, dict]:
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


def _entries(data: dict, readme: str | os.PathLike) -> list[dict]:
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
        check_format(result, "llc_result")  # not, say, a calibration's dict
        return result.get
    return lambda key: getattr(result, key, None)


def _recorded_dataset(get) -> dict:
    """The dataset the result records (``diagnostics["data"]["dataset"]``: name, config,
    split, revision), as plain strings; ``{}`` when it records none."""
    diag = get("diagnostics")
    data = diag.get("data") if isinstance(diag, Mapping) else None
    dataset = data.get("dataset") if isinstance(data, Mapping) else None
    if not isinstance(dataset, Mapping):
        return {}
    out = {}
    for key in ("name", "config", "split", "revision"):
        value = dataset.get(key)
        if value is not None and str(value) != "":
            out[key] = str(value)
    return out


def _recorded_adapter(get) -> dict | None:
    """The PEFT adapter the result records (``diagnostics["adapter"]``), if any."""
    diag = get("diagnostics")
    adapter = diag.get("adapter") if isinstance(diag, Mapping) else None
    return to_plain(dict(adapter)) if isinstance(adapter, Mapping) and adapter else None


def _entry_for(
    get,
    *,
    value,
    dataset_name,
    dataset_split,
    dataset_config,
    dataset_revision,
    dataset_fingerprint,
    model_revision,
    plot,
    date,
    card_dir: Path | None,
    source,
) -> tuple[dict, str]:
    """The ``hf_llc`` entry of an estimate (the arguments given, else what the result
    records: dataset name, config, split, revision; else the defaults) and the
    ``model-index`` ``dataset.type`` of its dataset."""
    recorded = _recorded_dataset(get)
    name = dataset_name if dataset_name is not None else recorded.get("name")
    if name is None or str(name) == "":
        raise ValueError(
            f"cannot record the LLC in {source} without a dataset name: pass dataset_name= "
            "(the result does not record the dataset it was estimated on)."
        )
    entry = _make_entry(
        get,
        value=value,
        dataset_name=_card_dataset_name(name, card_dir),
        dataset_config=dataset_config if dataset_config is not None else recorded.get("config"),
        dataset_split=dataset_split or recorded.get("split") or "train",
        dataset_revision=(
            dataset_revision if dataset_revision is not None else recorded.get("revision")
        ),
        dataset_fingerprint=dataset_fingerprint,
        model_revision=model_revision,
        plot=plot,
        date=date,
    )
    return entry, _dataset_type(name)


def _make_entry(
    get,
    *,
    value,
    dataset_name,
    dataset_config,
    dataset_split,
    dataset_revision,
    dataset_fingerprint,
    model_revision,
    plot,
    date,
) -> dict:
    settings = to_plain(dict(get("config") or {}))
    nbeta = to_plain(get("nbeta"))
    sampled = ((get("diagnostics") or {}).get("parameters")) or None
    selection = to_plain(sampled["selection"]) if sampled else None
    settings_id = _settings_id(settings, nbeta, selection)
    per_chain = to_plain(list(get("llc_per_chain") or []))
    entry = {
        "value": value,
        "std": to_plain(get("llc_std")),
        "stderr": to_plain(get("llc_stderr")),
        "per_chain": per_chain,
        "paired_value": to_plain(get("llc_paired_mean")),
        "dataset": dataset_name,
        "dataset_config": dataset_config,
        "dataset_split": dataset_split,
        "dataset_revision": dataset_revision,
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
    if selection is not None:  # a weight-refined LLC: which parameters were sampled
        entry["parameters"] = selection
    adapter = _recorded_adapter(get)
    if adapter is not None:  # a PEFT adapter's LLC: which adapter, on which base model
        entry["adapter"] = adapter
    return entry


def _settings_id(settings: dict, nbeta: Any, selection: Any = None) -> str:
    """The estimate's identity in the card: sampler settings and nβ, and for a weight-refined
    LLC the parameter selection (so it never replaces the whole model's entry). Settings that
    only add a report (``robustness``) leave it unchanged: the estimate is the same."""
    keyed = {"settings": chain_settings(settings), "nbeta": nbeta}
    if selection is not None:
        keyed["parameters"] = selection
    return "sgld-" + settings_hash(keyed, length=12)


def _entry_key(entry: Mapping) -> tuple:
    return (
        entry.get("model_name"),  # only set when the card's model-index lists several models
        entry.get("dataset"),
        entry.get("dataset_config"),
        entry.get("dataset_split"),
        entry.get("dataset_revision"),
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
    robustness = diag.get("robustness")
    if isinstance(robustness, Mapping):
        out["step_size_robustness"] = _robustness_summary(robustness)
    return out


def _robustness_summary(report: Mapping) -> dict:
    """λ̂ at ε and ε/2, each run's burn-in and draws, and the change (the per-chain values
    stay in the JSON)."""
    keys = ("step_rule", "step_sizes", "num_burnin", "num_draws", "llc_means", "llc_stderrs")
    return to_plain({k: report.get(k) for k in (*keys, "relative_change", "within_noise")})


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


def _card_link(path: str | os.PathLike, card_dir: Path | None) -> str:
    """A local path as a card may show it: relative to the card's folder when inside it, else
    the file's name (an absolute path of this machine means nothing on the Hub)."""
    local = Path(path).expanduser()
    if card_dir is None:
        return local.name
    try:
        return local.resolve().relative_to(card_dir.resolve()).as_posix()
    except ValueError:
        return local.name


def _plot_link(plot_path: str | os.PathLike | None, card_dir: Path | None) -> str | None:
    """``plot_path`` as the card links it; without a folder (a card on the Hub), a relative
    path is the file's path in the repository and is kept as it is."""
    if plot_path is None:
        return None
    if card_dir is None and not Path(os.path.expanduser(plot_path)).is_absolute():
        return Path(plot_path).as_posix()
    return _card_link(plot_path, card_dir)


def _is_local_path(name: str) -> bool:
    """Whether a dataset name is a local file or folder (absolute, or one that exists)."""
    expanded = os.path.expanduser(str(name))
    return os.path.isabs(expanded) or os.path.exists(expanded)


def _card_dataset_name(name: str, card_dir: Path | None) -> str:
    """A Hub dataset id as given; a local file or folder as :func:`_card_link` shows it."""
    text = str(name)
    if _is_local_path(text):
        return _card_link(os.path.expanduser(text), card_dir)
    return text


#: Suffixes of local data files: a name ending in one is a path, not a Hub dataset id, even
#: where the file is not found from here (a result read back on another machine).
_DATA_FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt", ".arrow")


def _dataset_type(name: str) -> str:
    """``dataset.type`` of a ``model-index`` entry: a Hub id as given, a local dataset (a path
    that exists, an absolute or ``./`` path, a data file's name) by its file or folder name,
    never a path of this machine."""
    text = str(name)
    if _is_local_path(text):
        return Path(os.path.expanduser(text)).resolve().name or text
    if text.startswith(("./", "../", ".\\", "..\\")) or text.lower().endswith(_DATA_FILE_SUFFIXES):
        return Path(text.replace("\\", "/")).name or text
    return text


# --------------------------------------------------------------------------- model-index


def _eval_result(entry: dict, dataset_type: str | None = None) -> EvalResult:
    """An ``hf_llc`` entry's ``model-index`` metric, as huggingface_hub represents one;
    ``dataset_type`` defaults to the entry's dataset name."""
    args = {
        "std": entry.get("std"),
        "stderr": entry.get("stderr"),
        "nbeta": entry.get("nbeta"),
        "num_samples": entry.get("num_samples"),
        "num_chains": entry.get("num_chains"),
        "num_draws": entry.get("num_draws"),
        "seed": entry.get("seed"),
    }
    return EvalResult(
        task_type=LLC_TASK_TYPE,
        task_name=LLC_TASK_NAME,
        dataset_type=dataset_type or entry["dataset"],
        dataset_name=entry["dataset"],
        dataset_config=entry.get("dataset_config"),
        dataset_split=entry.get("dataset_split"),
        dataset_revision=entry.get("dataset_revision"),
        metric_type=LLC_METRIC_TYPE,
        metric_value=entry["value"],
        metric_name=LLC_METRIC_NAME,
        metric_config=entry.get("settings_id"),
        metric_args={k: v for k, v in args.items() if v is not None},
    )


def _merge_model_index(
    model_index: list, new: EvalResult, model_name: str, block: int | None = None
) -> None:
    """Put ``new`` into the ``model-index`` block ``block`` (see :func:`_choose_block`;
    ``None``: a new block named ``model_name``).

    The block's LLC results are read into ``EvalResult`` objects, ``new`` replaces the one of
    the same estimate (or is added), and they are written back, grouped by task and dataset
    as huggingface_hub groups them, where the first LLC result was (at the end if none was).
    Results of other tasks are kept as they are, in their place.
    """
    if block is None:
        model_index.append({"name": model_name, "results": []})
        block = len(model_index) - 1
    results = model_index[block].get("results") or []
    is_llc = [
        isinstance(r, Mapping) and (r.get("task") or {}).get("type") == LLC_TASK_TYPE
        for r in results
    ]
    ours = [r for r, llc in zip(results, is_llc) if llc]
    evals = model_index_to_eval_results([{"name": model_name, "results": ours}])[1] if ours else []
    _upsert(evals, new, lambda e: (e.unique_identifier, e.metric_type, e.metric_config))
    merged = eval_results_to_model_index(model_name, evals)[0]["results"]
    out, placed = [], False
    for r, llc in zip(results, is_llc):
        if not llc:
            out.append(r)
        elif not placed:
            out.extend(merged)
            placed = True
    if not placed:
        out.extend(merged)
    model_index[block]["results"] = out


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


def _set_section(body: str, section: str, readme: str | os.PathLike, newline: str) -> str:
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

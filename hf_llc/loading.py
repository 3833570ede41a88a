"""Safe, strict loading of Hugging Face checkpoints for LLC estimation.

:func:`load_checkpoint` is the single entry point. It differs from calling
``AutoModel*.from_pretrained`` directly in ways that matter for LLC estimation:

* the model is always returned in ``float32`` and in ``eval()`` mode (SGLD noise and
  ``n * beta`` scaled losses are not meaningful in half precision);
* pickle weights (``pytorch_model.bin``) are refused unless ``allow_pickle=True``;
* custom modelling code is refused unless ``trust_remote_code=True``;
* a checkpoint that does not cover every parameter of the chosen model class (e.g. a
  bare encoder loaded with a masked-LM head) is refused unless
  ``allow_missing_weights=True`` -- an LLC measured at randomly initialised weights
  says nothing about the trained model;
* "not found" problems become one readable :class:`ValueError` instead of a deep
  traceback from ``huggingface_hub``.

Offline behaviour: ``transformers`` and ``huggingface_hub`` honour ``HF_HUB_OFFLINE=1``
by themselves (``local_files_only`` is forced on), so local folders and models already
in the Hub cache load without network access; nothing extra is passed.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import torch
import transformers
from huggingface_hub import hf_hub_download, is_offline_mode, try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers.models.auto import modeling_auto

from ._logging import get_logger
from .models import dln as _dln  # noqa: F401  (registers the DLN architecture: its folders load)
from .tasks import _SUFFIX_TASKS, TASKS, normalise_task, task_for_architecture

logger = get_logger(__name__)

__all__ = ["TASKS", "load_checkpoint", "resolve_auto_class", "tokenizer_path"]

_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def _task_list() -> str:
    return ", ".join(repr(t) for t in TASKS)


def resolve_auto_class(config: dict[str, Any], task: str | None = None) -> type:
    """Return the ``transformers`` Auto class for a raw ``config.json`` dict.

    ``task`` (one of :data:`TASKS`; ``_`` and ``-`` are interchangeable) wins over
    ``config["architectures"][0]``. Raises :class:`ValueError` listing the options when
    neither determines a class.
    """
    if task is not None:
        key = normalise_task(task)
    else:
        archs = config.get("architectures") or []
        if not archs:
            raise ValueError(
                "The checkpoint's config.json has no 'architectures' entry, so the model "
                f"head cannot be inferred; pass task=... (one of {_task_list()})."
            )
        key = task_for_architecture(archs[0], config.get("model_type"))
        if key is None:
            suffixes = ", ".join(s for s, _ in _SUFFIX_TASKS)
            raise ValueError(
                f"Cannot infer the model head from architecture {archs[0]!r} (known suffixes: "
                f"{suffixes}); pass task=... (one of {_task_list()})."
            )
    return getattr(transformers, TASKS[key][0])


def _is_local_like(path: str) -> bool:
    """Paths that can only mean a folder on disk, never a Hub repo id."""
    return os.path.isabs(path) or path.startswith((".", "~")) or "\\" in path


def _is_valid_repo_id(path: str) -> bool:
    if _is_local_like(path):
        return False
    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return True


def _not_found(path: str, reason: str, fix: str) -> ValueError:
    offline = " HF_HUB_OFFLINE is set, so the Hub was not contacted." if is_offline_mode() else ""
    return ValueError(f"Checkpoint {path!r} not found locally; {reason}.{offline} {fix}")


def _read_config(path: str, revision: str | None, is_local: bool) -> dict[str, Any]:
    if is_local:
        cfg_file = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_file):
            raise ValueError(
                f"{path!r} is a folder but has no config.json (nor a peft adapter_config.json); "
                "not a checkpoint."
            )
    else:
        try:
            cfg_file = hf_hub_download(path, "config.json", revision=revision)
        except Exception as exc:  # LocalEntryNotFound, RepositoryNotFound, HTTP errors...
            if is_offline_mode():
                reason = "it is not a local folder and is not in the Hub cache (offline mode)"
                fix = (
                    "Unset HF_HUB_OFFLINE (or set HF_HUB_OFFLINE=0) to download it, or "
                    f"download it first (hf download {path}) and pass the folder."
                )
            else:
                reason = f"fetching config.json from the Hub failed ({type(exc).__name__}: {exc})"
                fix = "Check the repo id (and revision), your network and access token."
            raise _not_found(path, reason, fix) from exc
    config = _read_json(cfg_file, "model.config.save_pretrained")
    return _check_config_fields(config, cfg_file)


def _read_json(path: str, writer: str) -> Any:
    """The JSON in ``path``; invalid JSON is a ``ValueError`` naming the file and ``writer``
    (what writes it)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc}); fix or regenerate it ({writer} writes it)."
        ) from exc


def _check_config_fields(config: Any, cfg_file: str) -> dict[str, Any]:
    """The fields read before ``from_pretrained`` must have the right JSON types."""
    if not isinstance(config, dict):
        raise ValueError(
            f"{cfg_file} holds a JSON {type(config).__name__}, but a model config is a JSON "
            'object ({"model_type": ..., "architectures": [...], ...}); fix or regenerate it.'
        )
    archs = config.get("architectures")
    if archs is not None and not (
        isinstance(archs, list) and all(isinstance(a, str) for a in archs)
    ):
        raise ValueError(
            f"{cfg_file}: 'architectures' must be a list of class names like "
            f'["GPT2LMHeadModel"], got {archs!r}; fix the file or pass task=... (CLI: --task).'
        )
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise ValueError(
            f"{cfg_file}: 'model_type' must be a string like \"gpt2\", got {model_type!r}."
        )
    return config


def _registered(model_type: Any) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        return isinstance(model_type, str) and model_type in CONFIG_MAPPING
    except Exception:
        return False


def _check_remote_code(config: dict[str, Any], path: str, trust_remote_code: bool) -> None:
    if trust_remote_code:
        return
    model_type = config.get("model_type")
    # Built into transformers, or registered in this process with AutoConfig.register (as
    # hf_llc registers its deep linear network): no remote code is needed for either.
    known_type = model_type in modeling_auto.CONFIG_MAPPING_NAMES or _registered(model_type)
    archs = config.get("architectures") or []
    native_arch = bool(archs) and hasattr(transformers, archs[0])
    if "auto_map" in config and not (known_type and native_arch):
        raise ValueError(
            f"Checkpoint {path!r} needs custom modelling code from its repository (config.json "
            "has an 'auto_map'). Executing it runs arbitrary Python; if you trust the source, "
            "pass trust_remote_code=True (CLI: --trust-remote-code)."
        )
    if not known_type:
        raise ValueError(
            f"Checkpoint {path!r} has model_type {model_type!r}, which transformers "
            f"{transformers.__version__} does not know. If the checkpoint ships custom code and "
            "you trust it, pass trust_remote_code=True (CLI: --trust-remote-code); otherwise "
            "upgrade transformers."
        )


def _available_weights(
    path: str,
    revision: str | None,
    is_local: bool,
    safe: tuple[str, ...] = _SAFE_WEIGHTS,
    pickle: tuple[str, ...] = _PICKLE_WEIGHTS,
) -> tuple[bool, bool]:
    """Return ``(has_safetensors, has_pickle)``; ``(True, True)`` if it cannot be told."""

    def present(name: str) -> bool | None:
        if is_local:
            return os.path.isfile(os.path.join(path, name))
        hit = try_to_load_from_cache(path, name, revision=revision)
        if isinstance(hit, str):
            return True
        if is_offline_mode():
            return False
        try:
            return transformers.utils.has_file(path, name, revision=revision)
        except Exception:  # network trouble: let from_pretrained decide
            return None

    def any_present(names: tuple[str, ...]) -> bool:
        results = [present(n) for n in names]
        return any(r is None or r for r in results)

    has_safe = any_present(safe)
    has_pickle = False if has_safe else any_present(pickle)
    return has_safe, has_pickle


def _load_error(path: str, is_local: bool, exc: Exception) -> ValueError:
    """One readable error for a failed ``from_pretrained``, naming the file at fault."""
    detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    if type(exc).__name__ == "SafetensorError":
        files = []
        if is_local:
            files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        where = os.path.join(path, files[0]) if len(files) == 1 else f"{path!r} (.safetensors)"
        return ValueError(
            f"the weights file {where} is corrupt or truncated ({detail}); re-save the "
            "model (save_pretrained) or download it again."
        )
    index = os.path.join(path, _SAFE_WEIGHTS[1])
    if isinstance(exc, json.JSONDecodeError) and is_local and os.path.isfile(index):
        return ValueError(
            f"the weights index {index} is not valid JSON ({detail}); re-save the model "
            "(save_pretrained) or download it again."
        )
    cfg_file = os.path.join(path, "config.json") if is_local else f"{path}/config.json"
    return ValueError(
        f"could not build the model from {cfg_file} ({detail}): a value there has the wrong "
        "type or is out of range; fix it (compare with the model class's defaults) or "
        "regenerate the file with save_pretrained."
    )


def _locate(path: str) -> tuple[str, bool]:
    """``(path, is_local)``: an existing folder (``~`` expanded), else a valid Hub repo id."""
    expanded = os.path.expanduser(path)
    if os.path.exists(expanded):
        if not os.path.isdir(expanded):
            raise ValueError(
                f"{path!r} is a file; pass the checkpoint folder (with config.json) instead."
            )
        return expanded, True
    if _is_valid_repo_id(path):
        return path, False
    raise _not_found(
        path,
        "no such folder, and it is not a valid Hugging Face Hub repo id",
        "Pass a folder written by save_pretrained (with config.json) or a Hub id like 'org/name'.",
    )


def _check_weight_files(
    path: str, revision: str | None, is_local: bool, allow_pickle: bool
) -> None:
    """Refuse a checkpoint without weights, or with only pickle weights unless allowed."""
    has_safe, has_pickle = _available_weights(path, revision, is_local)
    if has_safe:
        return
    if not has_pickle:
        raise ValueError(
            f"Checkpoint {path!r} has no model weights (looked for "
            f"{', '.join(_SAFE_WEIGHTS + _PICKLE_WEIGHTS)})"
            + (" in the local Hub cache while offline." if not is_local else ".")
        )
    if not allow_pickle:
        raise ValueError(
            f"Checkpoint {path!r} only has pickle weights (pytorch_model.bin). Unpickling "
            "can execute arbitrary code from the file; pass allow_pickle=True (CLI: "
            "--allow-pickle) only if you trust the source (or convert the checkpoint to "
            "safetensors)."
        )


def _check_loading_info(
    info: dict[str, Any], auto_cls: type, path: str, allow_missing_weights: bool
) -> None:
    """Refuse (or, with ``allow_missing_weights``, warn about) parameters that
    ``from_pretrained`` initialised randomly: missing from the checkpoint or mis-shaped."""
    # transformers 5 already drops tied parameters (e.g. GPT-2's lm_head.weight),
    # non-persistent buffers and `_keys_to_ignore_on_load_missing` from missing_keys.
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in (info.get("mismatched_keys") or ()))
    if not (missing or mismatched):
        return
    shown = missing[:10] + mismatched[:10]
    more = len(missing) + len(mismatched) - len(shown)
    listing = ", ".join(shown) + (f", ... (+{more} more)" if more > 0 else "")
    msg = (
        f"{auto_cls.__name__} for {path!r}: {len(missing)} parameter(s) missing from the "
        f"checkpoint and {len(mismatched)} with mismatched shapes were randomly "
        f"initialised: {listing}. An LLC estimated at randomly initialised weights is "
        "meaningless; pick the task/head the checkpoint was trained with"
    )
    if not allow_missing_weights:
        raise ValueError(
            msg + ", or pass allow_missing_weights=True (CLI: --allow-missing-weights) to "
            "load anyway."
        )
    logger.warning("%s.", msg)


def load_checkpoint(
    path_or_id: str | os.PathLike[str],
    *,
    task: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    allow_missing_weights: bool = False,
    base_model: str | os.PathLike[str] | None = None,
) -> transformers.PreTrainedModel:
    """Load a trained checkpoint as a float32 model in eval mode.

    A peft adapter folder (``adapter_config.json`` with ``adapter_model.safetensors``, as
    ``PeftModel.save_pretrained`` writes) loads as a peft model: its base model is loaded from
    ``base_model_name_or_path`` (or ``base_model``) with all the checks below, then the
    adapter on top of it for training (``is_trainable=True``), so that the adapter's weights
    have ``requires_grad=True`` and the base model's do not: :func:`hf_llc.estimate_llc` then
    samples the adapter alone. Needs the ``peft`` extra.

    Args:
        path_or_id: a local folder written by ``save_pretrained`` or a Hub repo id
            (``"org/name"``). With ``HF_HUB_OFFLINE=1`` a repo id must be in the Hub cache.
        task: which head to load. One of ``"causal-lm"``, ``"masked-lm"``, ``"seq2seq-lm"``,
            ``"sequence-classification"``, ``"token-classification"``,
            ``"question-answering"``, ``"multiple-choice"``, ``"image-classification"``,
            ``"image-text-to-text"``, ``"speech-seq2seq"``, ``"audio-classification"``,
            ``"pretraining"``, ``"base"`` (bare ``AutoModel``); underscores are accepted.
            ``None`` infers it from ``config.architectures[0]`` (exact transformers mapping,
            else the class-name suffix, e.g. ``*ForCausalLM``/``*LMHeadModel``).
        revision: Hub branch, tag or commit (ignored for local folders).
        trust_remote_code: allow running modelling code shipped with the checkpoint.
        allow_pickle: allow ``pytorch_model.bin`` weights (safetensors still preferred).
            Pickle files can execute code when loaded; only enable for trusted sources.
        allow_missing_weights: load even if some parameters are not in the checkpoint
            and are therefore randomly initialised (a warning is logged on the ``hf_llc`` logger).
        base_model: for an adapter folder, the base model to load instead of the one its
            ``adapter_config.json`` names (e.g. where that path does not exist here).
            ``task`` and the other options apply to the base model; ``revision`` to the
            adapter (the base model's revision is the adapter config's ``revision``).

    Raises:
        ValueError: checkpoint not found, unknown task/architecture, custom code without
            ``trust_remote_code``, pickle-only weights without ``allow_pickle``, or missing
            weights without ``allow_missing_weights``.
    """
    path, is_local = _locate(os.fspath(path_or_id))
    options = dict(
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        allow_missing_weights=allow_missing_weights,
    )
    adapter = _adapter_config(path, revision, is_local) if is_local else None
    if adapter is not None:
        return _load_adapter(path, is_local, adapter, task, revision, base_model, options)
    try:
        config = _read_config(path, revision, is_local)
    except ValueError:
        adapter = None if is_local else _adapter_config(path, revision, is_local)
        if adapter is None:
            raise
        return _load_adapter(path, is_local, adapter, task, revision, base_model, options)
    if base_model is not None:
        raise ValueError(
            f"base_model={os.fspath(base_model)!r} is for adapter folders, but {path!r} is a full "
            "checkpoint (config.json, no adapter_config.json): leave base_model unset."
        )
    _check_remote_code(config, path, trust_remote_code)
    auto_cls = resolve_auto_class(config, task)
    _check_weight_files(path, revision, is_local, allow_pickle)

    kwargs: dict[str, Any] = {
        "dtype": torch.float32,
        "trust_remote_code": trust_remote_code,
        "use_safetensors": None if allow_pickle else True,
        "output_loading_info": True,
    }
    if revision is not None and not is_local:
        kwargs["revision"] = revision
    try:
        model, info = auto_cls.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ValueError(f"Could not load checkpoint {path!r}: {exc}") from exc
    except Exception as exc:  # corrupt weights, or config values the model class rejects
        raise _load_error(path, is_local, exc) from exc

    _check_loading_info(info, auto_cls, path, allow_missing_weights)
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        model = model.to(torch.float32)  # e.g. modules kept in another dtype by the class
    model.eval()
    return model


# --------------------------------------------------------------------------- peft adapters

ADAPTER_CONFIG = "adapter_config.json"
_ADAPTER_SAFE = ("adapter_model.safetensors",)
_ADAPTER_PICKLE = ("adapter_model.bin",)
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _hub_file(path: str, name: str, revision: str | None) -> str | None:
    """A file of a Hub repo: from the cache, else (online) downloaded; ``None`` if absent."""
    hit = try_to_load_from_cache(path, name, revision=revision)
    if isinstance(hit, str):
        return hit
    if is_offline_mode():
        return None
    try:
        return hf_hub_download(path, name, revision=revision)
    except Exception:  # absent (EntryNotFound, 404) or unreachable
        return None


def _adapter_config(path: str, revision: str | None, is_local: bool) -> dict[str, Any] | None:
    """The parsed ``adapter_config.json`` of a peft adapter folder or repo, else ``None``."""
    if is_local:
        cfg_file = os.path.join(path, ADAPTER_CONFIG)
        if not os.path.isfile(cfg_file):
            return None
    else:
        cfg_file = _hub_file(path, ADAPTER_CONFIG, revision)
        if cfg_file is None:
            return None
    config = _read_json(cfg_file, "PeftModel.save_pretrained")
    if not isinstance(config, dict):
        raise ValueError(f"{cfg_file} holds a JSON {type(config).__name__}, not an object.")
    return config


def _adapter_base(
    path: str, adapter: dict[str, Any], base_model: str | os.PathLike[str] | None
) -> str:
    if base_model is not None:
        return os.fspath(base_model)
    base = adapter.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ValueError(
            f"the adapter {path!r} does not name its base model (adapter_config.json has no "
            "base_model_name_or_path): pass base_model=... (CLI: --base-model)."
        )
    return base


def _load_adapter(
    path: str,
    is_local: bool,
    adapter: dict[str, Any],
    task: str | None,
    revision: str | None,
    base_model: str | os.PathLike[str] | None,
    options: dict[str, Any],
) -> Any:
    """The base model (loaded by :func:`load_checkpoint`) with the adapter at ``path`` on it,
    its adapter weights trainable and the base weights frozen; float32, eval mode."""
    from .peft_support import require_peft

    peft = require_peft(f"loading the peft adapter {path!r}")
    base_id = _adapter_base(path, adapter, base_model)
    if task is None and adapter.get("task_type"):
        try:
            task = normalise_task(str(adapter["task_type"]))
        except ValueError:
            task = None  # a task type hf_llc has no head for: the base config decides
    base_revision = adapter.get("revision") if base_model is None else None
    try:
        base = load_checkpoint(base_id, task=task, revision=base_revision, **options)
    except ValueError as exc:
        raise ValueError(
            f"the base model of the adapter {path!r} ({base_id!r}, from "
            f"{'base_model' if base_model is not None else 'its adapter_config.json'}) could "
            f"not be loaded: {exc} Pass base_model=... (CLI: --base-model) to load another "
            "copy of it."
        ) from exc

    has_safe, has_pickle = _available_weights(
        path, revision, is_local, _ADAPTER_SAFE, _ADAPTER_PICKLE
    )
    if not (has_safe or has_pickle):
        raise ValueError(
            f"the adapter {path!r} has no weights (looked for "
            f"{', '.join(_ADAPTER_SAFE + _ADAPTER_PICKLE)})."
        )
    if not has_safe and not options["allow_pickle"]:
        raise ValueError(
            f"the adapter {path!r} only has pickle weights (adapter_model.bin). Unpickling can "
            "execute arbitrary code from the file; pass allow_pickle=True (CLI: --allow-pickle) "
            "only if you trust the source."
        )
    kwargs: dict[str, Any] = {"is_trainable": True}
    if revision is not None and not is_local:
        kwargs["revision"] = revision
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = peft.PeftModel.from_pretrained(base, path, **kwargs)
        except Exception as exc:  # mismatched shapes, unknown target modules, bad files
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise ValueError(
                f"could not put the adapter {path!r} on its base model {base_id!r} ({detail}); "
                "check that the adapter was trained on this base model."
            ) from exc
    missing = []
    for w in caught:
        if "missing adapter keys" in str(w.message):
            missing.append(str(w.message))
        else:  # everything else is passed on as it came
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if missing:
        msg = (
            f"the adapter {path!r} lacks weights its config declares ({missing[0][:300]}): "
            "those adapter weights keep their initial values"
        )
        if not options["allow_missing_weights"]:
            raise ValueError(
                msg + "; re-save the adapter, or pass allow_missing_weights=True (CLI: "
                "--allow-missing-weights) to load it anyway."
            )
        logger.warning("%s.", msg)
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        model = model.to(torch.float32)
    model.eval()
    return model


def tokenizer_path(
    model_path: str | os.PathLike[str],
    revision: str | None = None,
    *,
    base_model: str | os.PathLike[str] | None = None,
) -> tuple[str, str | None]:
    """Where the tokenizer of a checkpoint is: ``(path or repo id, revision)``.

    A full checkpoint: itself, at ``revision``. A peft adapter folder (or Hub repo): itself
    when it holds tokenizer files (a fine-tuning run that changed the tokenizer saves it
    there), else its base model (``base_model``, or ``base_model_name_or_path`` at the adapter
    config's ``revision``). Pass the result to ``AutoTokenizer.from_pretrained(path,
    revision=revision)``.
    """
    path, is_local = _locate(os.fspath(model_path))
    adapter = _adapter_config(path, revision, is_local)
    if adapter is None:
        return path, revision
    if is_local:
        own = any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES)
    else:
        own = any(_hub_file(path, f, revision) is not None for f in _TOKENIZER_FILES[:2])
    if own:
        return path, revision
    base = _adapter_base(path, adapter, base_model)
    return base, (adapter.get("revision") if base_model is None else None)

"""The LLC over training: one recipe over many checkpoints, resumable.

    from hf_llc.trajectory import estimate_trajectory, find_checkpoints

    checkpoints = find_checkpoints("out/")            # out/checkpoint-500, checkpoint-1000, …
    curve = estimate_trajectory(checkpoints, dataset, SamplerConfig(num_chains=4),
                                output="out/llc_trajectory.json", tokenizer=tokenizer)

A folder of a ``Trainer`` run's ``checkpoint-*`` directories, a list of folders, or a list of
Hub revisions of one repository (as the Pythia suite publishes ``step1000``, ``step2000``, …)
are estimated one after another with the same sampler settings and data. After each
checkpoint the curve is written to ``output`` (atomically), so an interrupted sweep loses at
most the checkpoint in progress, and a rerun with the same ``output`` skips every checkpoint
already there (finished checkpoints are never recomputed). A rerun with other settings or
data is refused rather than mixed into the same curve.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._logging import get_logger
from .sampling import SamplerConfig
from .serialization import check_format, format_header, settings_hash, to_plain, write_json

logger = get_logger(__name__)

__all__ = ["Checkpoint", "estimate_trajectory", "find_checkpoints", "load_trajectory"]

_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
_STEP_IN_NAME = re.compile(r"(\d+)(?!.*\d)")  # the last number in a name: step1000 -> 1000
#: The estimate keyword arguments that change the estimate (and so the curve's recipe).
_RECIPE_KWARGS = (
    "num_samples",
    "max_length",
    "block_size",
    "drop_empty_rows",
    "text_column",
    "parameters",
    "mixed_precision",
)


@dataclass(frozen=True)
class Checkpoint:
    """One point of the curve: a local folder or Hub id, its revision, its training step."""

    path: str
    revision: str | None = None
    step: int | None = None

    @property
    def key(self) -> str:
        """How the curve's JSON names this checkpoint (``path`` or ``path@revision``)."""
        return self.path if self.revision is None else f"{self.path}@{self.revision}"


def _step_of_folder(folder: Path) -> int | None:
    match = _CHECKPOINT_DIR.match(folder.name)
    if match:
        return int(match.group(1))
    state = folder / "trainer_state.json"
    if state.is_file():
        try:
            return int(json.loads(state.read_text())["global_step"])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def _is_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file()


def find_checkpoints(
    path: str | os.PathLike, *, revisions: Sequence[str] | None = None
) -> list[Checkpoint]:
    """The checkpoints of a training run, ordered by step.

    - ``revisions`` given: ``path`` (a Hub id or folder) at each revision, in the order given;
      the step is the last number in the revision's name (``step1000`` → 1000), if any.
    - A folder with ``checkpoint-N`` subfolders (a ``Trainer``'s ``output_dir``): each of
      them, by N; with none, the folder itself when it is a checkpoint (its step from
      ``trainer_state.json`` when present).

    Raises:
        ValueError: a Hub id without ``revisions``, a folder that holds no checkpoint, or an
            empty ``revisions``.
    """
    if revisions is not None:
        revisions = list(revisions)
        if not revisions:
            raise ValueError("revisions is empty: pass the Hub revisions (branches, tags) to use.")
        return [
            Checkpoint(
                str(path), rev, int(m.group(1)) if (m := _STEP_IN_NAME.search(rev)) else None
            )
            for rev in revisions
        ]
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(
            f"{path} is not a local folder: for a Hub repository pass its revisions "
            "(revisions=[...], --revisions step1000,step2000), or the checkpoint folders."
        )
    found = [
        Checkpoint(str(sub), None, _step_of_folder(sub))
        for sub in folder.iterdir()
        if sub.is_dir() and _CHECKPOINT_DIR.match(sub.name) and _is_checkpoint(sub)
    ]
    if found:
        return sorted(found, key=lambda c: c.step)
    if _is_checkpoint(folder):
        return [Checkpoint(str(folder), None, _step_of_folder(folder))]
    raise ValueError(
        f"{path} holds no checkpoint: expected checkpoint-N folders (a Trainer's output_dir) "
        "or a checkpoint (config.json or adapter_config.json)."
    )


def _recipe(cfg: SamplerConfig, dataset: Any, estimate_kwargs: Mapping[str, Any]) -> dict:
    """What every point of one curve shares: the sampler settings, the data, the options."""
    options = {k: estimate_kwargs.get(k) for k in _RECIPE_KWARGS}
    if callable(options["parameters"]):
        options["parameters"] = getattr(options["parameters"], "__name__", "predicate")
    return to_plain(
        {
            "config": cfg.to_dict(),
            "dataset_fingerprint": getattr(dataset, "_fingerprint", None),
            "options": options,
        }
    )


def load_trajectory(path: str | os.PathLike) -> dict:
    """A curve written by :func:`estimate_trajectory` (format ``hf_llc.trajectory``)."""
    data = json.loads(Path(path).read_text())
    check_format(data, "trajectory", source=path)
    return data


def _entry(cp: Checkpoint, result: Any, seconds: float) -> dict:
    diag = result.diagnostics
    return to_plain(
        {
            "path": cp.path,
            "revision": cp.revision,
            "step": cp.step,
            "llc_mean": result.llc_mean,
            "llc_std": result.llc_std,
            "llc_stderr": result.llc_stderr,
            "verdict": result.verdict,
            "verdict_reasons": list(result.verdict_reasons),
            "nbeta": result.nbeta,
            "num_samples": result.num_samples,
            "num_params": result.num_params,
            "init_loss": result.init_loss,
            "rhat_rank": diag.get("rhat_rank"),
            "num_chains_used": diag.get("num_chains_used"),
            "seconds": seconds,
        }
    )


def _start(output: Path | None, recipe: dict) -> dict:
    """The curve so far: the one in ``output`` when it has the same recipe, a new one when
    there is none."""
    if output is None or not output.exists():
        return {**format_header("trajectory"), "recipe": recipe, "checkpoints": []}
    done = load_trajectory(output)
    if done.get("recipe") != recipe:
        old = done.get("recipe") or {}
        differs = sorted(k for k in set(old) | set(recipe) if old.get(k) != recipe.get(k))
        raise ValueError(
            f"{output} holds a curve made with other {', '.join(differs) or 'settings'} "
            f"(recipe {settings_hash(old)[:8]} vs {settings_hash(recipe)[:8]}): a curve keeps "
            "one recipe. Pass another output file, or remove it to start over."
        )
    return done


def estimate_trajectory(
    checkpoints: Sequence[Checkpoint | str | os.PathLike],
    dataset: Any,
    config: SamplerConfig | None = None,
    *,
    output: str | os.PathLike | None = None,
    resume_from: str | os.PathLike | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
    on_result: Callable[[Checkpoint, Any, dict], None] | None = None,
    **estimate_kwargs: Any,
) -> dict:
    """Estimate the LLC of every checkpoint with one recipe; return the curve.

    Args:
        checkpoints: :class:`Checkpoint` s (see :func:`find_checkpoints`) or folder paths
            (their step from a ``checkpoint-N`` name or ``trainer_state.json``), in order.
        dataset: the data of every estimate (as for :func:`hf_llc.estimate_llc`).
        config: the sampler settings of every estimate.
        output: the curve's JSON file, written after each checkpoint; when it exists with the
            same recipe, the checkpoints it holds are kept, not recomputed.
        resume_from: the curve to continue when it is not ``output`` (e.g. on the processes
            of a multi-process run that do not write); default ``output``.
        load_kwargs: arguments of :func:`hf_llc.load_checkpoint` (``task``, ``allow_pickle``,
            ``trust_remote_code``, ``base_model``, …) for every checkpoint.
        on_result: called as ``on_result(checkpoint, result, entry)`` after each new estimate
            (e.g. to print it or write the checkpoint's card).
        **estimate_kwargs: :func:`hf_llc.estimate_llc`'s keyword arguments (``tokenizer``,
            ``num_samples``, ``parameters``, …), the same for every checkpoint.

    Returns:
        ``{"format": "hf_llc.trajectory", "format_version", "recipe", "checkpoints": [...]}``,
        one entry per checkpoint in order, each with ``path``, ``revision``, ``step``,
        ``llc_mean``, ``llc_std``, ``llc_stderr``, ``verdict`` (and reasons), ``nbeta``,
        ``num_samples``, ``num_params``, ``init_loss``, ``rhat_rank`` and ``seconds``.

    Raises:
        ValueError: no checkpoints, the same checkpoint twice, or an ``output`` that holds a
            curve of another recipe; and whatever loading or estimating a checkpoint raises
            (the curve up to the previous checkpoint is already written).
    """
    from .estimator import estimate_llc
    from .loading import load_checkpoint

    cfg = config if config is not None else SamplerConfig()
    points = [
        c if isinstance(c, Checkpoint) else Checkpoint(str(c), None, _step_of_folder(Path(c)))
        for c in checkpoints
    ]
    if not points:
        raise ValueError("checkpoints is empty: there is nothing to estimate.")
    keys = [c.key for c in points]
    if len(set(keys)) != len(keys):
        raise ValueError(f"checkpoints lists the same checkpoint twice: {keys}.")
    out = Path(output) if output is not None else None
    if out is not None:
        from .serialization import check_output_path

        check_output_path(out, "output")
    previous = Path(resume_from) if resume_from is not None else out
    curve = _start(previous, _recipe(cfg, dataset, estimate_kwargs))
    done = {
        (e["path"] if e.get("revision") is None else f"{e['path']}@{e['revision']}"): e
        for e in curve["checkpoints"]
    }
    for i, cp in enumerate(points):
        if cp.key in done:
            logger.info("%s: already in %s, kept", cp.key, previous)
            continue
        logger.info("[%d/%d] estimating %s", i + 1, len(points), cp.key)
        t0 = time.perf_counter()
        model = load_checkpoint(cp.path, revision=cp.revision, **dict(load_kwargs or {}))
        result = estimate_llc(model, dataset, cfg, **estimate_kwargs)
        del model
        entry = _entry(cp, result, time.perf_counter() - t0)
        done[cp.key] = entry
        curve["checkpoints"] = [done[c.key] for c in points if c.key in done]
        if out is not None:
            write_json(out, curve)
        if on_result is not None:
            on_result(cp, result, entry)
    curve["checkpoints"] = [done[c.key] for c in points]
    if out is not None:
        write_json(out, curve)
    return curve


def plot_trajectory(curve: Mapping[str, Any], path: str | os.PathLike | None = None) -> Any:
    """λ̂ ± 2 standard errors against the training step (see
    :func:`hf_llc.plotting.plot_llc_history`); checkpoints without a step are placed by
    their order."""
    from .plotting import plot_llc_history

    entries = list(curve["checkpoints"])
    with_steps = all(e.get("step") is not None for e in entries)
    history = [
        {**e, "step": e["step"] if with_steps else i}
        for i, e in enumerate(entries)
        if e.get("llc_mean") is not None and math.isfinite(e["llc_mean"])
    ]
    return plot_llc_history(history, path, title="LLC over training")

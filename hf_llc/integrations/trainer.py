"""Track the LLC over training with ``transformers.Trainer``.

::

    from hf_llc import LLCCallback, SamplerConfig

    trainer = Trainer(model=model, args=args, train_dataset=train_dataset)
    callback = LLCCallback(trainer, config=SamplerConfig(num_chains=4), every_n_steps=500)
    trainer.add_callback(callback)
    trainer.train()   # logs llc/mean, llc/std, llc/stderr, ... and writes llc_history.json

When to estimate: ``every_n_steps``, ``every_n_epochs``, ``at_steps``, ``on_evaluate``,
``on_save`` (all off by default) and ``at_end`` (on by default: one estimate at the end of
training). Two triggers at the same step give one estimate.

What the callback guarantees:

- **Training is not disturbed.** Each estimate samples a flat copy of the weights whose views
  stand in for the parameters only while the loss is evaluated (see
  :func:`hf_llc.estimate_llc`), with its own per-chain generators; afterwards the parameters
  are exactly w*, every module's train/eval mode is restored, and so are the global random
  states (torch CPU and CUDA, NumPy, ``random``), which the Trainer's data order and dropout
  draw from. Training with and without the callback gives bit-identical weights and losses.
- **Logging.** The values go through ``Trainer.log`` (so they reach ``state.log_history`` and
  the reporting integrations), with the Trainer's pending log/evaluate/save decisions for the
  step kept as they were, so the Trainer's own loss logs are never swallowed. Without a
  trainer reference (``LLCCallback(None, dataset=...)``) they are appended to
  ``state.log_history`` only.
- **Bad data fails before training, not hours into it.** ``on_train_begin`` dry-runs the
  data preparation and checks of every estimate and one loss at w*
  (:func:`hf_llc.estimator.check_inputs`), so a token id outside the vocabulary, a missing
  column or a bad setting stops ``Trainer.train()`` before its first step. An estimate that
  still fails later (out of memory, a loss that breaks at new weights, …) is logged on the
  ``hf_llc`` logger with its reason, recorded in the history as skipped, and training goes
  on; ``raise_on_error=True`` raises it instead.
- **Distributed.** Under DDP every process runs its share of the chains (chain c on process
  c mod P) and gets the gathered result; only the main process writes files.
- **Resuming.** The history is part of the Trainer's checkpoint: the callback is an
  ``ExportableState``, so each ``checkpoint-*/trainer_state.json`` holds it under
  ``stateful_callbacks``, and ``Trainer.train(resume_from_checkpoint=...)`` continues the curve
  from there (estimates after the checkpoint's step are dropped). Leave
  ``TrainingArguments.restore_callback_states_from_checkpoint`` at its default ``False``:
  the callback reads its history back itself and keeps its trainer, data and loss; set to
  ``True``, the Trainer replaces it by one rebuilt from its plain settings (see
  :meth:`LLCCallback.state`), which then falls back to the training data loader's dataset.
- **Log level.** The Trainer's ``log_level`` / ``log_level_replica`` (``TrainingArguments``)
  set hf_llc's verbosity (:func:`hf_llc.set_verbosity`) during each estimate, and it is put
  back afterwards; ``"passive"`` (the default) leaves hf_llc's own level.
- **Mixed precision.** The trainer's bf16 setting is used; an fp16 trainer gets fp32
  estimates with a logged warning (:func:`hf_llc.distributed.resolve_mixed_precision`, the
  same rule as ``estimate_llc`` and the CLI).
- **Files** (main process, in ``args.output_dir``): ``llc_history.json`` after every
  estimate (atomically, so an interrupted run keeps every finished estimate), ``llc.json``
  inside each ``checkpoint-*`` folder for estimates made at a save, and at the end of
  training ``llc_history.png`` (when matplotlib is installed) and the final estimate in the
  model card ``README.md``, re-applied after ``Trainer.create_model_card()`` rewrites it.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.training_args import trainer_log_levels

from .._logging import get_logger, verbosity
from ..estimator import LLCResult, check_inputs, estimate_llc
from ..sampling import SamplerConfig
from ..serialization import atomic_write, to_plain, write_json
from ..targets import check_targets, model_targets

HISTORY_FILE = "llc_history.json"
PLOT_FILE = "llc_history.png"
CHECKPOINT_RESULT_FILE = "llc.json"
TRAINER_STATE_FILE = "trainer_state.json"  # the Trainer's name for it in checkpoint-* folders

logger = get_logger(__name__)

#: Settings of the callback that are plain values, kept in :meth:`LLCCallback.state`.
_STATE_ARGS = (
    "every_n_steps",
    "every_n_epochs",
    "at_steps",
    "on_save",
    "on_evaluate",
    "at_end",
    "num_samples",
    "targets",
    "dataset_name",
    "write_model_card",
    "plot",
    "progress",
    "raise_on_error",
)

#: Attribute names of settings whose attribute differs from the argument.
_SETTING_ATTRS = {
    "on_save": "on_save_flag",
    "on_evaluate": "on_evaluate_flag",
    "write_model_card": "write_card",
}

_CONTROL_FLAGS = (
    "should_log",
    "should_evaluate",
    "should_save",
    "should_epoch_stop",
    "should_training_stop",
)


class _GlobalRandomState:
    """The global random states a training loop draws from, captured to be put back."""

    def __init__(self):
        self.torch = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.numpy = np.random.get_state()
        self.python = random.getstate()

    def restore(self) -> None:
        torch.set_rng_state(self.torch)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        np.random.set_state(self.numpy)
        random.setstate(self.python)


class LLCCallback(TrainerCallback, ExportableState):
    """Estimate the LLC at chosen moments of ``Trainer`` training and log it.

    By default it estimates once, at the end of training; ask for more with
    ``every_n_steps``, ``every_n_epochs``, ``at_steps``, ``on_save`` or ``on_evaluate``.

    Args:
        trainer: the ``Trainer`` (recommended): its ``log`` is used for logging, its
            ``train_dataset`` when ``dataset`` is ``None``, its ``processing_class`` to
            tokenize a raw-text dataset, its ``accelerator`` to split chains over processes,
            and its ``create_model_card`` is wrapped so the LLC is re-added after it runs.
            ``None`` works too (see :meth:`attach`); then ``dataset`` is required and the
            values only reach ``state.log_history``.
        dataset: the data of L_n (default: the trainer's ``train_dataset``). Anything
            :func:`hf_llc.estimate_llc` accepts.
        config: the :class:`SamplerConfig` of every estimate (default ``SamplerConfig()``;
            a dict of its fields, as :meth:`state` records it, is accepted too).
        every_n_steps: estimate when ``global_step`` is a multiple of this.
        every_n_epochs: estimate at the end of every epoch whose number (``state.epoch``,
            rounded) is a multiple of this.
        at_steps: estimate at these global steps (e.g. log-spaced, for stage-wise curves).
        on_save: estimate whenever the Trainer saves a checkpoint (also written into it as
            ``llc.json``). Default ``False``: saving costs no estimate unless asked.
        on_evaluate: estimate after every evaluation (default ``False``).
        at_end: estimate at the end of training unless the last step already has one
            (default ``True``).
        num_samples: use the first N rows of the dataset (n, which sets nβ = n / log n).
        loss_fn: passed to :func:`hf_llc.estimate_llc` (``loss_fn(outputs, batch)``).
        targets: ``"data"`` (the dataset's labels) or ``"model"``: the realizable variant for
            regression models, labels replaced by the current model's own outputs
            (:func:`hf_llc.targets.model_targets`), so the LLC is measured at a minimum of its
            loss even while training is far from one.
        estimate_kwargs: other keyword arguments of :func:`hf_llc.estimate_llc` (e.g.
            ``forward_kwargs``, ``mixed_precision``). By default the trainer's mixed precision
            is used: bf16 as is, fp16 as fp32 with a logged warning (SGLD does not sample in
            fp16).
        dataset_name: the dataset's name in the model card (default: the name the result
            records from the dataset's ``info``, e.g. a Hub id, else ``"train_dataset"``).
        write_model_card: write the final estimate into ``output_dir/README.md``.
        plot: save ``llc_history.png`` at the end (needs matplotlib; skipped without it).
        progress: show a progress bar during each estimate.
        raise_on_error: an estimate that fails during training raises (stopping training)
            instead of being logged and skipped. Bad data and settings are refused at
            ``on_train_begin`` either way.

    Attributes:
        history: one dict per estimate (``step``, ``epoch``, ``reason``, ``llc_mean``,
            ``llc_std``, ``llc_stderr``, ``llc_per_chain``, ``init_loss``, ``nbeta``, ...);
            a skipped estimate has ``skipped: True`` and ``error`` (its reason) instead.
        last_result: the most recent :class:`~hf_llc.LLCResult`.

    Raises:
        ValueError: a bad setting (named in the message).
    """

    def __init__(
        self,
        trainer: Any = None,
        *,
        dataset: Any = None,
        config: SamplerConfig | None = None,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        at_steps: Iterable[int] | None = None,
        on_save: bool = False,
        on_evaluate: bool = False,
        at_end: bool = True,
        num_samples: int | None = None,
        loss_fn: Any = None,
        targets: str = "data",
        estimate_kwargs: Mapping[str, Any] | None = None,
        dataset_name: str | None = None,
        write_model_card: bool = True,
        plot: bool = True,
        progress: bool = False,
        raise_on_error: bool = False,
    ):
        if isinstance(config, Mapping):
            try:
                config = SamplerConfig.from_dict(dict(config))
            except (TypeError, ValueError) as err:
                raise ValueError(f"config={dict(config)!r} is not a SamplerConfig: {err}") from err
        self.config = config if config is not None else SamplerConfig()
        if not isinstance(self.config, SamplerConfig):
            raise ValueError(f"config must be a SamplerConfig, got {type(config).__name__}.")
        self.config.validate()
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name}={value!r}: pass a positive integer or None.")
        steps = sorted(set(at_steps)) if at_steps is not None else []
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in steps):
            raise ValueError(f"at_steps={at_steps!r}: pass non-negative integer global steps.")
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 2):
            raise ValueError(f"num_samples={num_samples!r}: pass an integer ≥ 2 or None.")
        self.targets = check_targets(targets)
        self.estimate_kwargs = dict(estimate_kwargs or {})
        reserved = {"config", "loss_fn", "num_samples", "accelerator", "progress"}
        clash = sorted(reserved & set(self.estimate_kwargs))
        if clash:
            raise ValueError(
                f"estimate_kwargs may not contain {clash}: pass them as LLCCallback arguments."
            )
        self.dataset = dataset
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.at_steps = {int(s) for s in steps}
        self.on_save_flag = bool(on_save)
        self.on_evaluate_flag = bool(on_evaluate)
        self.at_end = bool(at_end)
        self.num_samples = num_samples
        self.loss_fn = loss_fn
        self.dataset_name = dataset_name
        self.write_card = bool(write_model_card)
        self.plot = bool(plot)
        self.progress = bool(progress)
        self.raise_on_error = bool(raise_on_error)
        self.history: list[dict] = []
        self.last_result: LLCResult | None = None
        self.trainer = None
        self._last_step: int | None = None
        self._output_dir: Path | None = None
        self._is_main = True
        self._loader_dataset: Any = None
        if trainer is not None:
            self.attach(trainer)

    # -- wiring ------------------------------------------------------------------------

    def attach(self, trainer: Any) -> LLCCallback:
        """Give the callback its ``Trainer`` (for a callback created with ``None``)."""
        if self.trainer is trainer:
            return self
        self.trainer = trainer
        original = trainer.create_model_card
        callback = self

        def create_model_card(*args, **kwargs):
            out = original(*args, **kwargs)
            if callback.write_card and callback.last_result is not None:
                callback.write_model_card(trainer.args.output_dir)
            return out

        create_model_card.__doc__ = original.__doc__
        trainer.create_model_card = create_model_card
        return self

    def _data(self) -> Any:
        if self.dataset is not None:
            return self.dataset
        if self.trainer is not None and self.trainer.train_dataset is not None:
            return self.trainer.train_dataset
        if self._loader_dataset is not None:  # rebuilt by the Trainer from state()
            return self._loader_dataset
        raise ValueError(
            "LLCCallback has no data: pass dataset=... or LLCCallback(trainer, ...) with a "
            "trainer that has a train_dataset."
        )

    # -- checkpoint state (transformers' ExportableState) -------------------------------

    def state(self) -> dict:
        """What a Trainer checkpoint keeps of this callback (in ``trainer_state.json``, under
        ``stateful_callbacks``): ``{"args": ..., "attributes": {"history": ...}}``.

        ``args`` are the callback's plain settings and its config as a dict, enough for
        ``LLCCallback(**args)`` to rebuild it without its trainer reference, dataset,
        ``loss_fn`` and ``estimate_kwargs``; ``attributes`` holds :attr:`history`.
        """
        args = {name: getattr(self, _SETTING_ATTRS.get(name, name)) for name in _STATE_ARGS}
        args["at_steps"] = sorted(self.at_steps)
        args["config"] = self.config.to_dict()
        return to_plain({"args": args, "attributes": {"history": self.history}})

    def _restore_history(self, args, state) -> None:
        """On resumed training, the history up to the checkpoint: from the checkpoint's
        ``trainer_state.json`` if it holds this callback's state, else from
        ``llc_history.json`` in ``output_dir``."""
        self.history = []
        if state.global_step == 0:
            return
        saved = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
        if isinstance(saved, list):  # several callbacks of this class: the one with our args
            mine = self.state()["args"]
            saved = next((s for s in saved if s.get("args") == mine), None)
        old = None
        if isinstance(saved, Mapping):
            old = (saved.get("attributes") or {}).get("history")
        if old is None and self._output_dir is not None:
            path = self._output_dir / HISTORY_FILE
            if path.exists():
                old = json.loads(path.read_text()).get("history", [])
        if old is not None:
            self.history = [e for e in old if e.get("step", math.inf) <= state.global_step]

    # -- Trainer events ----------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        loader = kwargs.get("train_dataloader")
        self._loader_dataset = getattr(loader, "dataset", None)
        self._data()  # fail at the start, not hours into training
        with self._log_level(args):
            self._dry_run(kwargs.get("model"))
        self._output_dir = Path(args.output_dir) if args.output_dir else None
        self._is_main = bool(state.is_world_process_zero)
        self._last_step = None
        self._restore_history(args, state)
        stateful = getattr(state, "stateful_callbacks", None)
        if isinstance(stateful, dict):
            # A checkpoint saved without this callback lacks its entry, which the Trainer's
            # next save would look up.
            stateful.setdefault(type(self).__name__, self.state())
        if 0 in self.at_steps and state.global_step == 0:
            self._estimate(args, state, control, kwargs.get("model"), "start")

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        due = step in self.at_steps or (
            self.every_n_steps is not None and step % self.every_n_steps == 0
        )
        if due:
            self._estimate(args, state, control, kwargs.get("model"), "step")

    def on_epoch_end(self, args, state, control, **kwargs):
        n = self.every_n_epochs
        if n is not None and state.epoch is not None and round(state.epoch) % n == 0:
            self._estimate(args, state, control, kwargs.get("model"), "epoch")

    def on_save(self, args, state, control, **kwargs):
        if self.on_save_flag:
            entry = self._estimate(args, state, control, kwargs.get("model"), "save")
            done = entry is not None and not entry.get("skipped")
            if done and self._is_main and self._output_dir is not None:
                ckpt = self._output_dir / f"checkpoint-{state.global_step}"
                if ckpt.is_dir() and self.last_result is not None:
                    self.last_result.save(ckpt / CHECKPOINT_RESULT_FILE)
                    self._add_to_checkpoint_state(state, ckpt)

    def _add_to_checkpoint_state(self, state, ckpt: Path) -> None:
        """The Trainer wrote ``trainer_state.json`` before ``on_save``: add the estimate just
        made at this save to the history it holds, so resuming from here keeps it."""
        name = type(self).__name__
        stateful = getattr(state, "stateful_callbacks", None)
        path = ckpt / TRAINER_STATE_FILE
        if not isinstance(stateful, dict) or not isinstance(stateful.get(name), dict):
            return  # absent, or several callbacks of this class: left as the Trainer wrote it
        stateful[name] = self.state()
        if path.is_file():
            saved = json.loads(path.read_text())
            if isinstance((saved.get("stateful_callbacks") or {}).get(name), dict):
                saved["stateful_callbacks"][name] = stateful[name]
                text = json.dumps(saved, indent=2, sort_keys=True) + "\n"  # as the Trainer does
                atomic_write(path, text.encode("utf-8"))

    def on_evaluate(self, args, state, control, **kwargs):
        if self.on_evaluate_flag:
            self._estimate(args, state, control, kwargs.get("model"), "evaluate")

    def on_train_end(self, args, state, control, **kwargs):
        if self.at_end:
            self._estimate(args, state, control, kwargs.get("model"), "end")
        if not self._is_main or self._output_dir is None:
            return
        if self.history:
            self._write_history()
            estimates = [e for e in self.history if not e.get("skipped")]
            if self.plot and estimates:
                try:
                    from ..plotting import plot_llc_history

                    plot_llc_history(estimates, self._output_dir / PLOT_FILE)
                except ImportError:
                    pass
        if self.write_card and self.last_result is not None:
            with self._log_level(args):
                self.write_model_card(self._output_dir)

    # -- work --------------------------------------------------------------------------

    def _model(self, model):
        if model is None:
            model = self.trainer.model if self.trainer is not None else None
        if model is None:
            raise ValueError("LLCCallback needs the model: the Trainer passes it to callbacks.")
        return model

    def _estimate_kwargs(self) -> dict:
        """The keyword arguments of every :func:`estimate_llc` call but the data."""
        kwargs = dict(self.estimate_kwargs)
        accelerator = getattr(self.trainer, "accelerator", None)
        if accelerator is not None:
            kwargs.setdefault("accelerator", accelerator)
        processing_class = getattr(self.trainer, "processing_class", None)
        if processing_class is not None and self.dataset is None:
            kwargs.setdefault("tokenizer", processing_class)
        return kwargs

    def _inputs(self, model) -> tuple[Any, int | None]:
        """(data, num_samples) of an estimate at the model's current weights."""
        data = self._data()
        num_samples = self.num_samples
        if self.targets == "model":
            data = _first_rows(data, num_samples)
            data = model_targets(model, data)
            num_samples = None
        return data, num_samples

    def _dry_run(self, model) -> None:
        """Prepare and check the data as every estimate will, and compute one loss at w*:
        bad data or settings raise now, before the first training step."""
        model = self._model(model)
        rng = _GlobalRandomState()
        modes = [(m, m.training) for m in model.modules()]
        try:
            data, num_samples = self._inputs(model)
            check_inputs(
                model,
                data,
                self.config,
                loss_fn=self.loss_fn,
                num_samples=num_samples,
                **self._estimate_kwargs(),
            )
        except ValueError as err:
            raise ValueError(
                f"LLCCallback, checked before training (nothing was trained): {err}"
            ) from err
        finally:
            for module, training in modes:
                module.training = training
            rng.restore()

    def _estimate(self, args, state, control, model, reason: str) -> dict | None:
        model = self._model(model)
        step = int(state.global_step)
        if self._last_step == step:
            return None
        self._last_step = step

        kwargs = self._estimate_kwargs()
        rng = _GlobalRandomState()
        modes = [(m, m.training) for m in model.modules()]
        try:
            with self._log_level(args):
                data, num_samples = self._inputs(model)
                result = estimate_llc(
                    model,
                    data,
                    self.config,
                    loss_fn=self.loss_fn,
                    num_samples=num_samples,
                    progress=self.progress and self._is_main,
                    **kwargs,
                )
        except Exception as err:  # not KeyboardInterrupt (nor EstimateInterrupted)
            if self.raise_on_error:
                raise
            return self._skipped(state, reason, err)
        finally:
            for module, training in modes:
                module.training = training
            rng.restore()

        self.last_result = result
        diag = result.diagnostics or {}
        entry = {
            "step": step,
            "epoch": state.epoch,
            "reason": reason,
            "targets": self.targets,
            "llc_mean": result.llc_mean,
            "llc_std": result.llc_std,
            "llc_stderr": result.llc_stderr,
            "llc_per_chain": list(result.llc_per_chain),
            "init_loss": result.init_loss,
            "nbeta": result.nbeta,
            "num_samples": result.num_samples,
            "rhat_rank": diag.get("rhat_rank"),
            "divergent_chains": len(diag.get("divergences") or []),
            "verdict": getattr(result, "verdict", None),
            "verdict_reasons": list(getattr(result, "verdict_reasons", None) or []),
            "sampling_seconds": (result.timings or {}).get("sampling_seconds"),
        }
        self.history.append(to_plain(entry))
        logs = {
            "llc/mean": result.llc_mean,
            "llc/std": result.llc_std,
            "llc/stderr": result.llc_stderr,
            "llc/init_loss": result.init_loss,
            "llc/nbeta": result.nbeta,
            "llc/divergent_chains": entry["divergent_chains"],
        }
        if isinstance(entry["rhat_rank"], (int, float)):
            logs["llc/rhat_rank"] = entry["rhat_rank"]
        logs = {k: float(v) for k, v in logs.items() if v is not None and math.isfinite(v)}
        self._log(state, control, logs)
        if self._is_main and self._output_dir is not None:
            self._write_history()
        return entry

    @staticmethod
    def _log_level(args):
        """hf_llc's verbosity at the Trainer's ``log_level`` (``log_level_replica`` on a process
        that does not log) for the block; ``"passive"`` leaves it as it is."""
        name = getattr(args, "log_level", "passive")
        if not getattr(args, "should_log", True):
            name = getattr(args, "log_level_replica", "passive")
        level = trainer_log_levels.get(name, -1) if isinstance(name, str) else name
        return verbosity(None if level is None or level < 0 else level)

    def _skipped(self, state, reason: str, err: Exception) -> dict:
        """Record a failed estimate as skipped (logged, in the history) so training goes on."""
        message = f"{type(err).__name__}: {' '.join(str(err).split())}"
        logger.warning(
            "LLCCallback: the LLC estimate at step %d (%s) failed and was skipped; training "
            "continues (pass raise_on_error=True to stop instead). %s",
            state.global_step,
            reason,
            message,
        )
        entry = {
            "step": int(state.global_step),
            "epoch": state.epoch,
            "reason": reason,
            "targets": self.targets,
            "skipped": True,
            "error": message,
        }
        self.history.append(to_plain(entry))
        if self._is_main and self._output_dir is not None:
            self._write_history()
        return entry

    def _log(self, state, control, logs: dict[str, float]) -> None:
        if self.trainer is None:
            state.log_history.append({**logs, "epoch": state.epoch, "step": state.global_step})
            return
        # Trainer.log runs on_log, which clears control.should_log: keep the Trainer's own
        # decisions for this step so its loss log (and eval/save) still happen.
        flags = {name: getattr(control, name) for name in _CONTROL_FLAGS}
        trainer_flags = {name: getattr(self.trainer.control, name) for name in _CONTROL_FLAGS}
        try:
            self.trainer.log(logs)
        finally:
            for name, value in flags.items():
                setattr(control, name, value)
            for name, value in trainer_flags.items():
                setattr(self.trainer.control, name, value)

    def _write_history(self) -> None:
        self._output_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            self._output_dir / HISTORY_FILE,
            {"config": self.config.to_dict(), "targets": self.targets, "history": self.history},
        )

    def write_model_card(self, output_dir: str | Path | None = None) -> Path | None:
        """Write the latest estimate into ``output_dir/README.md`` (main process only).

        Call this after ``Trainer.create_model_card()`` if the callback has no trainer
        reference (with one, it is re-applied automatically). A non-finite estimate (every
        chain diverged) is not written: a warning is logged and ``None`` returned.
        """
        if self.last_result is None or not self._is_main:
            return None
        if not math.isfinite(self.last_result.llc_mean):
            logger.warning(
                "LLCCallback: the latest LLC estimate is not finite (every chain diverged), so "
                "it is not written into the model card; see llc_history.json."
            )
            return None
        from ..modelcard import write_llc_to_model_card

        directory = Path(output_dir) if output_dir is not None else self._output_dir
        if directory is None:
            return None
        plot = directory / PLOT_FILE
        return write_llc_to_model_card(
            directory,
            self.last_result,
            dataset_name=self.dataset_name or _recorded_name(self.last_result) or "train_dataset",
            plot_path=plot if plot.exists() else None,
        )


def _recorded_name(result: Any) -> str | None:
    """The dataset name an estimate recorded (``diagnostics["data"]["dataset"]["name"]``)."""
    data = (result.diagnostics or {}).get("data") or {}
    return (data.get("dataset") or {}).get("name")


def _first_rows(data: Any, num_samples: int | None) -> Any:
    if num_samples is None:
        return data
    if isinstance(data, Mapping):
        return {k: v[:num_samples] for k, v in data.items()}
    if hasattr(data, "select"):
        return data.select(range(min(num_samples, len(data))))
    raise ValueError("num_samples with targets='model' needs a datasets.Dataset or dict.")

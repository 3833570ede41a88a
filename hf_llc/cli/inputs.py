"""What ``hf-llc estimate`` and ``calibrate`` load: the model, its tokenizer, the data and a
user's loss function, each failing with one error that names the flag and the fix."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path


def _import_function(spec: str, flag: str):
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ValueError(
            f"{flag} takes MODULE:FUNCTION or path/to/file.py:FUNCTION (e.g. mylosses:pair_loss), "
            f"got {spec!r}."
        )
    try:
        if module_name.endswith(".py"):
            file_spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if file_spec is None or not Path(module_name).is_file():
                raise ImportError(f"no such file {module_name}")
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:  # console scripts do not put the cwd on sys.path
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as err:  # missing, or not valid Python
        raise ValueError(f"{flag}: cannot import {module_name!r} ({err}).") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{flag}: {module_name!r} has no function {attr!r}.")
    return fn


def load_data(
    name: str, *, config: str | None = None, split: str = "train", revision: str | None = None
):
    """A ``datasets.Dataset`` from a Hub name (at ``revision``), a ``save_to_disk`` folder or
    a local file."""
    import datasets

    path = Path(name)
    suffix = path.suffix.lower()
    builders = {
        ".json": "json",
        ".jsonl": "json",
        ".csv": "csv",
        ".parquet": "parquet",
        ".txt": "text",
    }
    if suffix in builders and not path.exists():
        raise ValueError(f"--dataset {name}: no such file; check the path.")
    if path.is_file():
        if suffix not in builders:
            raise ValueError(
                f"--dataset {name}: unknown file type {suffix!r}; use one of {sorted(builders)}."
            )
        if path.stat().st_size == 0:
            raise ValueError(f"--dataset {name} is an empty file; the LLC needs data rows.")
        try:
            return datasets.load_dataset(builders[suffix], data_files=str(path), split="train")
        except Exception as err:  # malformed json/csv/parquet: arrow and datasets errors
            raise ValueError(
                f"--dataset {name}: could not read it as {builders[suffix]} "
                f"({type(err).__name__}: {err}); check the file's format."
            ) from err
    if path.is_dir() and (
        (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
    ):
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as err:  # a damaged save_to_disk folder: arrow and json errors
            raise ValueError(
                f"--dataset {name}: could not read the save_to_disk folder "
                f"({type(err).__name__}: {err}); save it again with dataset.save_to_disk."
            ) from err
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"--split {split!r} not in {name} (splits: {list(loaded)}).")
            return loaded[split]
        return loaded
    try:
        return datasets.load_dataset(name, config, split=split, revision=revision)
    except Exception as err:  # datasets raises many types for "not found"/offline
        from huggingface_hub import is_offline_mode

        offline = (
            " HF_HUB_OFFLINE is set: download the dataset first, or unset HF_HUB_OFFLINE."
            if is_offline_mode()
            else ""
        )
        raise ValueError(
            f"--dataset {name!r} could not be loaded ({type(err).__name__}: {err}). Pass a Hub "
            "dataset name (online or cached), a save_to_disk folder, or a data file." + offline
        ) from err


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def load_tokenizer(model: str, revision: str | None, trust_remote_code: bool):
    """The checkpoint's tokenizer, or ``None`` when it has none (raw text then gives a clear
    error). A local folder whose tokenizer files fail to load is an error naming them."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            model, revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as err:  # OSError when absent; anything from a corrupt file
        files = [f for f in TOKENIZER_FILES if (Path(model) / f).is_file()]
        if not files:
            return None  # not every checkpoint has one
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise ValueError(
            f"the tokenizer in {model} ({', '.join(files)}) could not be loaded ({detail}); "
            "fix or re-save it (tokenizer.save_pretrained), or remove the tokenizer files if "
            "the dataset is already tokenized (input_ids)."
        ) from err


def _dataset_description(args: argparse.Namespace) -> dict | None:
    """What the flags say of a Hub dataset (name, config, split, revision), recorded in the
    result and the card; ``None`` for a local file or folder (never a path as its name)."""
    if Path(args.dataset).exists():
        return None
    return {
        "name": args.dataset,
        "config": args.dataset_config,
        "split": args.split,
        "revision": args.dataset_revision,
    }


def quiet_loading(args: argparse.Namespace) -> None:
    """With ``--quiet``, the loading bars of datasets and transformers are silenced too."""
    if args.quiet:
        import datasets
        from transformers.utils import logging as transformers_logging

        datasets.disable_progress_bars()
        transformers_logging.disable_progress_bar()


def load_options(args: argparse.Namespace) -> dict:
    """:func:`hf_llc.load_checkpoint`'s keyword arguments from the flags (but ``revision``)."""
    return dict(
        task=args.task,
        trust_remote_code=args.trust_remote_code,
        allow_pickle=args.allow_pickle,
        allow_missing_weights=args.allow_missing_weights,
        base_model=args.base_model,
    )


def loss_functions(args: argparse.Namespace) -> tuple:
    """(loss_fn, model_loss_fn) imported from ``--loss-fn`` / ``--model-loss-fn``."""
    loss_fn = _import_function(args.loss_fn, "--loss-fn") if args.loss_fn else None
    model_loss_fn = (
        _import_function(args.model_loss_fn, "--model-loss-fn") if args.model_loss_fn else None
    )
    return loss_fn, model_loss_fn


def load_data_and_options(
    args: argparse.Namespace, model: str, revision: str | None, functions: tuple
) -> tuple:
    """(data, estimate_llc keyword arguments) from the data flags, with the tokenizer of the
    checkpoint ``model`` at ``revision`` and the user's ``(loss_fn, model_loss_fn)``."""
    from ..loading import tokenizer_path

    loss_fn, model_loss_fn = functions
    # A PEFT adapter folder without tokenizer files uses its base model's tokenizer.
    where, tok_revision = tokenizer_path(model, revision, base_model=args.base_model)
    tokenizer = load_tokenizer(where, tok_revision, args.trust_remote_code)
    data = load_data(
        args.dataset, config=args.dataset_config, split=args.split, revision=args.dataset_revision
    )
    kwargs = dict(
        loss_fn=loss_fn,
        model_loss_fn=model_loss_fn,
        tokenizer=tokenizer,
        text_column=args.text_column,
        max_length=args.max_length,
        num_samples=args.num_samples,
        block_size=args.block_size,
        drop_empty_rows=not args.keep_empty_rows,
        dataset_description=_dataset_description(args),
        parameters=args.parameters,
        mixed_precision=args.mixed_precision,
        progress=not args.quiet,
    )
    return data, kwargs


def load_inputs(args: argparse.Namespace) -> tuple:
    """(model, data, estimate_llc keyword arguments) from the checkpoint flags."""
    from ..loading import load_checkpoint

    quiet_loading(args)
    functions = loss_functions(args)  # a bad --loss-fn fails before any loading
    model = load_checkpoint(args.model, revision=args.revision, **load_options(args))
    data, kwargs = load_data_and_options(args, args.model, args.revision, functions)
    return model, data, kwargs

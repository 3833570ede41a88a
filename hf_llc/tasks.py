"""Task names: which model head a checkpoint is loaded with, and which loss hf_llc builds.

hf_llc names tasks one way (``"causal-lm"``, ``"sequence-classification"``, …: the keys of
:data:`TASKS`). The names used elsewhere in the Hugging Face toolchain are accepted too and
mapped onto those by :func:`normalise_task`:

* Hub pipeline tags (a model card's ``pipeline_tag``): ``text-generation`` → ``causal-lm``,
  ``fill-mask`` → ``masked-lm``, ``text-classification`` → ``sequence-classification``,
  ``text2text-generation``/``summarization``/``translation`` → ``seq2seq-lm``, …;
* peft ``TaskType`` values (an adapter's ``task_type``): ``CAUSAL_LM``, ``SEQ_CLS``,
  ``TOKEN_CLS``, ``SEQ_2_SEQ_LM``, ``QUESTION_ANS``, ``FEATURE_EXTRACTION``;
* the transformers Auto class names (``AutoModelForCausalLM`` …).

Case, ``_`` and spaces do not matter (``CAUSAL_LM`` is ``causal-lm``).

:func:`model_task` tells the task of a model object (a ``PreTrainedModel``, or a peft model
wrapping one): the one place where hf_llc decides what kind of model it was given.

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ADAPTED_TASKS",
    "TASK_ALIASES",
    "TASKS",
    "accepted_task_names",
    "model_task",
    "normalise_task",
    "task_for_architecture",
]

# task name -> (Auto class name, name of the transformers *_MAPPING_NAMES table it uses).
# The order is the priority used when an architecture appears in several tables
# (e.g. GPT2LMHeadModel is both the causal-LM and the pre-training class of gpt2).
TASKS: dict[str, tuple[str, str]] = {
    "causal-lm": ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    "masked-lm": ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
    "seq2seq-lm": ("AutoModelForSeq2SeqLM", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES"),
    "sequence-classification": (
        "AutoModelForSequenceClassification",
        "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    ),
    "token-classification": (
        "AutoModelForTokenClassification",
        "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    ),
    "question-answering": (
        "AutoModelForQuestionAnswering",
        "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    ),
    "multiple-choice": ("AutoModelForMultipleChoice", "MODEL_FOR_MULTIPLE_CHOICE_MAPPING_NAMES"),
    "image-classification": (
        "AutoModelForImageClassification",
        "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    ),
    "image-text-to-text": (
        "AutoModelForImageTextToText",
        "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    ),
    "speech-seq2seq": ("AutoModelForSpeechSeq2Seq", "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES"),
    "audio-classification": (
        "AutoModelForAudioClassification",
        "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
    ),
    "pretraining": ("AutoModelForPreTraining", "MODEL_FOR_PRETRAINING_MAPPING_NAMES"),
    "base": ("AutoModel", "MODEL_MAPPING_NAMES"),
}

#: The tasks whose per-sample loss hf_llc computes from the logits (token-weighted for the
#: token-level ones, see :mod:`hf_llc.adapters`); other models use ``outputs.loss`` or a
#: user's ``loss_fn``.
ADAPTED_TASKS = ("causal-lm", "masked-lm", "token-classification", "sequence-classification")

#: Other spellings (already normalised: lower case, ``-`` for ``_`` and spaces) → task.
TASK_ALIASES: dict[str, str] = {
    # Hub pipeline tags
    "text-generation": "causal-lm",
    "fill-mask": "masked-lm",
    "text-classification": "sequence-classification",
    "sentiment-analysis": "sequence-classification",
    "zero-shot-classification": "sequence-classification",
    "ner": "token-classification",
    "text2text-generation": "seq2seq-lm",
    "summarization": "seq2seq-lm",
    "translation": "seq2seq-lm",
    "feature-extraction": "base",
    # peft TaskType values
    "seq-cls": "sequence-classification",
    "token-cls": "token-classification",
    "seq-2-seq-lm": "seq2seq-lm",
    "question-ans": "question-answering",
    # shorter spellings
    "seq2seq": "seq2seq-lm",
    "clm": "causal-lm",
    "mlm": "masked-lm",
    # transformers Auto class names
    **{auto.lower(): task for task, (auto, _) in TASKS.items()},
}

# Fallback for architectures transformers does not list (custom code): class-name suffix
# -> task. Checked in order, so more specific suffixes come first.
_SUFFIX_TASKS: tuple[tuple[str, str], ...] = (
    ("ForCausalLM", "causal-lm"),
    ("LMHeadModel", "causal-lm"),  # GPT2LMHeadModel, OpenAIGPTLMHeadModel, XLNetLMHeadModel...
    ("ForMaskedLM", "masked-lm"),
    ("ForSeq2SeqLM", "seq2seq-lm"),
    ("ForConditionalGeneration", "seq2seq-lm"),  # T5/BART; VLMs are found in the tables
    ("ForSequenceClassification", "sequence-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMultipleChoice", "multiple-choice"),
    ("ForImageClassification", "image-classification"),
    ("ForAudioClassification", "audio-classification"),
    ("ForPreTraining", "pretraining"),
    ("Model", "base"),
)


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def accepted_task_names() -> list[str]:
    """Every name :func:`normalise_task` accepts: the tasks, then the other spellings."""
    return [*TASKS, *(a for a in TASK_ALIASES if a not in TASKS)]


def normalise_task(name: str) -> str:
    """The hf_llc task (a key of :data:`TASKS`) for ``name``: an hf_llc task, a Hub pipeline
    tag, a peft ``TaskType`` or an Auto class name, in any case, with ``_``, ``-`` or spaces.

    Raises:
        ValueError: ``name`` is none of those; the message lists the accepted names.
    """
    if not isinstance(name, str):
        raise ValueError(f"task must be a string like 'causal-lm', got {name!r}.")
    key = _key(name)
    if key in TASKS:
        return key
    if key in TASK_ALIASES:
        return TASK_ALIASES[key]
    tasks = ", ".join(repr(t) for t in TASKS)
    aliases = ", ".join(f"{a!r} ({t})" for a, t in TASK_ALIASES.items() if not a.startswith("auto"))
    raise ValueError(
        f"Unknown task {name!r}. Supported tasks: {tasks}; also accepted (case, '_' and '-' "
        f"alike): {aliases}, peft TaskType names and transformers Auto class names."
    )


def task_for_architecture(architecture: str, model_type: str | None = None) -> str | None:
    """The task of a model class name: its entry in the transformers mapping tables for
    ``model_type`` (exact), else its class-name suffix (``*ForCausalLM``, ``*LMHeadModel``,
    …); ``None`` when neither tells."""
    if model_type is not None:
        from transformers.models.auto import modeling_auto

        for task, (_, table_name) in TASKS.items():
            table = getattr(modeling_auto, table_name, {})
            entry = table.get(model_type)
            names = (entry,) if isinstance(entry, str) else tuple(entry or ())
            if architecture in names:
                return task
    for suffix, task in _SUFFIX_TASKS:
        if architecture.endswith(suffix):
            return task
    return None


def _unwrapped(model: Any) -> Any:
    """The transformers model inside a peft model (``PeftModel*``); else ``model``."""
    if hasattr(model, "peft_config") and callable(getattr(model, "get_base_model", None)):
        try:
            return model.get_base_model()
        except Exception:  # a look-alike without a base model: judge the object itself
            return model
    return model


def model_task(model: Any) -> str | None:
    """The task of a model object (a key of :data:`TASKS`), or ``None`` when its class says
    nothing (a plain ``torch.nn.Module``).

    A peft model is judged by the model it wraps. The class is looked up in the transformers
    mapping tables of its ``config.model_type``, then by its name's suffix (see
    :func:`task_for_architecture`).
    """
    inner = _unwrapped(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    if not isinstance(model_type, str):
        model_type = None
    return task_for_architecture(type(inner).__name__, model_type)

"""Task names (hf_llc's, Hub pipeline tags, peft TaskType) and the one model-kind function."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from tiny_text import tiny_bert_config
from transformers import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    T5Config,
    T5ForConditionalGeneration,
)

from hf_llc.adapters import model_kind
from hf_llc.loading import resolve_auto_class
from hf_llc.tasks import (
    ADAPTED_TASKS,
    TASKS,
    accepted_task_names,
    model_task,
    normalise_task,
    task_for_architecture,
)


@pytest.mark.parametrize(
    "name, task",
    [
        # hf_llc's own names, in any case and with _ or -
        ("causal-lm", "causal-lm"),
        ("Causal_LM", "causal-lm"),
        ("sequence_classification", "sequence-classification"),
        # Hub pipeline tags
        ("text-generation", "causal-lm"),
        ("fill-mask", "masked-lm"),
        ("text-classification", "sequence-classification"),
        ("token-classification", "token-classification"),
        ("text2text-generation", "seq2seq-lm"),
        ("summarization", "seq2seq-lm"),
        ("translation", "seq2seq-lm"),
        ("question-answering", "question-answering"),
        ("feature-extraction", "base"),
        # peft TaskType values, as peft spells them
        ("CAUSAL_LM", "causal-lm"),
        ("SEQ_CLS", "sequence-classification"),
        ("TOKEN_CLS", "token-classification"),
        ("SEQ_2_SEQ_LM", "seq2seq-lm"),
        ("QUESTION_ANS", "question-answering"),
        ("FEATURE_EXTRACTION", "base"),
        # Auto class names
        ("AutoModelForMaskedLM", "masked-lm"),
        (" text generation ", "causal-lm"),
    ],
)
def test_normalise_task(name, task):
    assert normalise_task(name) == task
    assert task in TASKS


def test_every_peft_task_type_is_accepted():
    peft = pytest.importorskip("peft")
    for task_type in peft.TaskType:
        assert normalise_task(task_type.value) in TASKS


def test_every_accepted_name_normalises_to_a_task_and_tasks_to_themselves():
    for name in accepted_task_names():
        assert normalise_task(name) in TASKS
    for task in TASKS:
        assert normalise_task(task) == task
    assert set(ADAPTED_TASKS) <= set(TASKS)


def test_unknown_task_lists_the_accepted_names():
    with pytest.raises(ValueError, match="Unknown task 'telepathy'") as err:
        normalise_task("telepathy")
    text = str(err.value)
    for name in ("'causal-lm'", "'text-generation' (causal-lm)", "'seq-cls'", "'fill-mask'"):
        assert name in text
    with pytest.raises(ValueError, match="must be a string"):
        normalise_task(None)


def test_resolve_auto_class_takes_pipeline_tags_and_peft_names():
    import transformers

    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
    assert resolve_auto_class(config, "text-generation") is transformers.AutoModelForCausalLM
    assert resolve_auto_class(config, "SEQ_CLS") is transformers.AutoModelForSequenceClassification


def _bert(cls, **kw):
    return cls(tiny_bert_config(**kw))


def test_model_task_of_transformers_models():
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=24, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    t5 = T5ForConditionalGeneration(
        T5Config(vocab_size=24, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)
    )
    expected = {
        gpt2: "causal-lm",
        _bert(BertForMaskedLM): "masked-lm",
        _bert(BertForSequenceClassification, num_labels=2): "sequence-classification",
        _bert(BertForTokenClassification, num_labels=3): "token-classification",
        _bert(BertModel): "base",
        t5: "seq2seq-lm",
    }
    for model, task in expected.items():
        assert model_task(model) == task, type(model).__name__
        # The loss hf_llc builds: the adapted tasks, every other model "other".
        assert model_kind(model) == (task if task in ADAPTED_TASKS else "other")


def test_model_task_of_plain_modules_and_custom_classes():
    class TinyNet(torch.nn.Module):
        pass

    class MyNetForCausalLM(torch.nn.Module):  # custom code: known by its suffix
        pass

    assert model_task(TinyNet()) is None
    assert model_kind(TinyNet()) == "other"
    assert model_task(MyNetForCausalLM()) == "causal-lm"
    assert task_for_architecture("GPT2LMHeadModel", "gpt2") == "causal-lm"
    assert task_for_architecture("RobertaForMaskedLM", "roberta") == "masked-lm"
    assert task_for_architecture("SomethingElse") is None


def test_model_task_sees_through_a_peft_model():
    peft = pytest.importorskip("peft")
    base = GPT2LMHeadModel(GPT2Config(vocab_size=24, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    # A peft model without a task type has the class PeftModel: its base model tells.
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["c_attn"]))
    assert type(lora).__name__ == "PeftModel"
    assert model_task(lora) == "causal-lm"
    assert model_kind(lora) == "causal-lm"


def test_importing_tasks_loads_neither_torch_nor_transformers():
    code = (
        "import sys; import hf_llc.tasks as t; t.normalise_task('CAUSAL_LM'); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]

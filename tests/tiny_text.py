"""A word-level tokenizer and short texts shared by the tests that need a tiny language model."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, PreTrainedTokenizerFast

WORDS = "the cat dog sat ran on a mat log red blue big small fast slow".split()


def texts(count: int) -> list[str]:
    """``count`` short texts of 2–7 words (lengths vary, so padding is exercised)."""
    return [
        " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 3 + i % 6)) for i in range(count)
    ]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer over WORDS with [PAD], [UNK] and [MASK]."""
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]"
    )


def tiny_bert_config(**kwargs) -> BertConfig:
    """A one-layer BERT config over the tokenizer's vocabulary (24 ids, 32 positions)."""
    return BertConfig(
        vocab_size=24,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        **kwargs,
    )

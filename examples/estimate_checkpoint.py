"""Estimate the LLC of a checkpoint folder on a text dataset and record it in its model card.

    python examples/estimate_checkpoint.py            # builds a tiny GPT-2 in ./tiny-gpt2 first
    python examples/estimate_checkpoint.py MODEL_DIR  # any local causal-LM checkpoint folder

The tiny model is trained for a few hundred steps on the example texts first, so that its
weights sit near a minimum of the loss (the LLC is defined at a minimum: at random weights the
chains drift downhill and the estimate comes out negative).
"""

from __future__ import annotations

import sys
from pathlib import Path

from datasets import Dataset

from hf_llc import SamplerConfig, estimate_llc, load_checkpoint, write_llc_to_model_card

WORDS = "the cat dog sat ran on a mat log red blue big small fast slow".split()
TEXTS = [" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 8)) for i in range(512)]


def word_tokenizer():
    """A whitespace word-level tokenizer over WORDS, with [PAD] (id 0) and [UNK]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]")


def train_on_texts(model, tokenizer, steps: int) -> None:
    """Full-batch AdamW on TEXTS' next-token loss, so the weights sit near a minimum."""
    import torch

    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


def build_tiny_checkpoint(folder: Path) -> None:
    """A 1-layer GPT-2 with a word-level tokenizer, briefly trained, saved like a checkpoint."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = word_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=1, n_head=2)
    config.pad_token_id = 0
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    train_on_texts(model, tokenizer, steps=400)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tiny-gpt2")
    if not folder.exists():
        build_tiny_checkpoint(folder)
    from transformers import AutoTokenizer

    model = load_checkpoint(folder)  # float32, safetensors only, refuses missing weights
    tokenizer = AutoTokenizer.from_pretrained(folder)
    data = Dataset.from_dict({"text": TEXTS})

    result = estimate_llc(
        model,
        data,
        SamplerConfig(num_chains=4, num_burnin=200, num_draws=300, batch_size=64),
        tokenizer=tokenizer,  # tokenizes "text"; L_n is the mean token loss
    )
    print(result.summary())
    result.save(folder / "llc.json")
    result.plot(folder / "llc_trace.png")
    card = write_llc_to_model_card(
        folder,
        result,
        dataset_name="example-texts",
        dataset_split="train",
        plot_path=folder / "llc_trace.png",
    )
    print(f"LLC written into {card}")


if __name__ == "__main__":
    main()

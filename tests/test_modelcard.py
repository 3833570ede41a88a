"""Writing LLC estimates into model cards: metadata, body section, idempotence, preservation."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from huggingface_hub import ModelCard  # noqa: E402

from hf_llc import LLCResult  # noqa: E402
from hf_llc.modelcard import (  # noqa: E402
    LLC_CARD_TEMPLATE,
    SECTION_END,
    SECTION_START,
    read_llc_from_model_card,
    write_llc_to_model_card,
)

DATE = "2024-05-01T12:00:00Z"
TEMPLATE_FILE = Path(__file__).resolve().parents[1] / "model_cards" / "llc_card_template.md"

RICH_FRONT = """\
# a comment that must survive
license: apache-2.0
language:
  - en
tags: [text-generation, "quoted tag"]
datasets:
- wikitext
model-index:
- name: my-model
  results:
  - task:
      type: text-generation
    dataset:
      name: WikiText
      type: wikitext
      split: test
    metrics:
    - type: perplexity
      value: 21.5
      name: Perplexity
# trailing comment
widget:
  - text: "Hello"
"""
RICH_BODY = """
# My model

Some *custom* text, with a table:

| a | b |
|---|---|
| 1 | 2 |
"""
RICH = f"---\n{RICH_FRONT}---\n{RICH_BODY}"


def make_result(llc=3.25, seed=0, **config) -> LLCResult:
    cfg = {
        "step_size": "curvature",
        "step_scale": 0.3,
        "localization": 1.0,
        "nbeta": None,
        "batch_size": 32,
        "num_chains": 4,
        "num_burnin": 20,
        "num_draws": 50,
        "seed": seed,
        "mala": True,
    }
    cfg.update(config)
    rng = np.random.default_rng(seed)
    per_chain = [np.float64(llc + d) for d in (-0.2, -0.1, 0.1, 0.2)]
    return LLCResult(
        llc_mean=np.float64(llc),
        llc_std=float(np.std(per_chain, ddof=1)),
        llc_stderr=float(np.std(per_chain, ddof=1) / 2),
        llc_per_chain=per_chain,
        loss_trace=rng.normal(1.0, 0.01, size=(4, 50)),
        init_loss=np.float32(0.875),
        nbeta=np.float64(21.7),
        num_samples=np.int64(100),
        num_params=1234,
        config=cfg,
        diagnostics={
            "num_chains_used": 4,
            "divergences": [],
            "retries": [{"chain": 1, "message": "x"}],
            "step_size_per_chain": [1e-3] * 4,
            "burnin_trace": [np.zeros(20)] * 4,
            "rhat": np.float64(1.01),
            "ess": 180.5,
            "mala_acceptance_per_chain": [0.9] * 4,
            "mala_acceptance": np.float64(0.9),
        },
        timings={"sampling_seconds": 1.5, "chain_seconds": [0.4] * 4},
    )


def split_card(text: str) -> tuple[dict, str, str]:
    """(metadata, YAML text, body) of a card."""
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), front, body


def test_template_file_matches_embedded_constant():
    assert TEMPLATE_FILE.read_text(encoding="utf-8") == LLC_CARD_TEMPLATE


def test_missing_readme_created_from_template(tmp_path):
    model_dir = tmp_path / "tiny-model"
    model_dir.mkdir()
    path = write_llc_to_model_card(
        model_dir, make_result(), dataset_name="wikitext", dataset_config="wt2", date=DATE
    )
    assert path == model_dir / "README.md"
    text = path.read_text()
    meta, _, body = split_card(text)
    assert "# tiny-model" in body
    assert meta["library_name"] == "transformers"
    assert body.count("## Local Learning Coefficient") == 1
    # only the temp-file-free result remains in the directory
    assert sorted(p.name for p in model_dir.iterdir()) == ["README.md"]

    (entry,) = meta["hf_llc"]
    assert entry["value"] == 3.25 and type(entry["value"]) is float
    assert entry["dataset"] == "wikitext" and entry["dataset_config"] == "wt2"
    assert entry["dataset_split"] == "train"
    assert entry["nbeta"] == pytest.approx(21.7)
    assert entry["num_samples"] == 100 and entry["num_params"] == 1234
    assert entry["seed"] == 0 and entry["num_chains"] == 4 and entry["num_draws"] == 50
    assert entry["init_loss"] == 0.875
    assert entry["settings"]["batch_size"] == 32
    assert entry["date"] == DATE
    assert set(entry["versions"]) == {"hf_llc", "torch", "transformers", "huggingface_hub"}
    assert entry["diagnostics"] == {
        "num_chains_used": 4,
        "rhat": 1.01,
        "ess": 180.5,
        "mala_acceptance": 0.9,
        "num_divergences": 0,
        "num_retries": 1,
    }

    # the model-index metric round-trips through huggingface_hub's ModelCardData/EvalResult
    card = ModelCard.load(path)
    (ev,) = card.data.eval_results
    assert card.data.model_name == "tiny-model"
    assert (ev.metric_type, ev.metric_name) == ("llc", "Local Learning Coefficient")
    assert ev.metric_value == 3.25
    assert ev.metric_args["std"] == pytest.approx(entry["std"])
    assert ev.metric_config == entry["settings_id"]
    assert (ev.dataset_type, ev.dataset_config, ev.dataset_split) == ("wikitext", "wt2", "train")


def test_metadata_is_plain_python(tmp_path):
    path = write_llc_to_model_card(tmp_path, make_result(), dataset_name="d", date=DATE)
    text = path.read_text()
    assert "numpy" not in text and "!!" not in text  # no python/numpy YAML tags
    (entry,) = read_llc_from_model_card(tmp_path)

    def walk(x):
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert x is None or type(x) in (bool, int, float, str), (x, type(x))

    walk(entry)


def test_rich_card_preserved(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(RICH)
    write_llc_to_model_card(tmp_path, make_result(), dataset_name="wikitext", date=DATE)
    text = readme.read_text()
    meta, front, body = split_card(text)

    # body: original text kept byte for byte, LLC section appended
    assert body.startswith(RICH_BODY)
    assert body[len(RICH_BODY) :].lstrip("\n").startswith(SECTION_START)
    # YAML: every line of the original block except model-index's is kept verbatim
    original_meta = yaml.safe_load(RICH_FRONT)
    for line in RICH_FRONT.splitlines():
        assert line in front.splitlines()
    assert front.startswith(RICH_FRONT.split("model-index:")[0])
    assert '# trailing comment\nwidget:\n  - text: "Hello"\n' in front
    for key in ("license", "language", "tags", "datasets", "widget"):
        assert meta[key] == original_meta[key]
    # the other model-index result is untouched, the LLC one added beside it
    (block,) = meta["model-index"]
    assert block["name"] == "my-model"
    assert block["results"][0] == original_meta["model-index"][0]["results"][0]
    assert block["results"][1]["metrics"][0]["type"] == "llc"
    card = ModelCard(text)
    assert [e.metric_type for e in card.data.eval_results] == ["perplexity", "llc"]


def test_idempotent(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(RICH)
    kwargs = dict(dataset_name="wikitext", dataset_config="wt2", date=DATE)
    write_llc_to_model_card(tmp_path, make_result(), **kwargs)
    first = readme.read_bytes()
    write_llc_to_model_card(tmp_path, make_result(), **kwargs)
    assert readme.read_bytes() == first

    # a new value for the same dataset and settings replaces the entry and its row
    write_llc_to_model_card(tmp_path, make_result(llc=4.5), **kwargs)
    entries = read_llc_from_model_card(tmp_path)
    assert [e["value"] for e in entries] == [4.5]
    meta, _, body = split_card(readme.read_text())
    assert body.count(SECTION_START) == 1 and body.count("| wikitext |") == 1
    llc_metrics = [
        m for r in meta["model-index"][0]["results"] for m in r["metrics"] if m["type"] == "llc"
    ]
    assert [m["value"] for m in llc_metrics] == [4.5]


def test_new_dataset_or_settings_add_entries(tmp_path):
    base = dict(dataset_name="wikitext", dataset_config="wt2", date=DATE)
    write_llc_to_model_card(tmp_path, make_result(), **base)
    write_llc_to_model_card(tmp_path, make_result(), **base | {"dataset_split": "test"})
    write_llc_to_model_card(tmp_path, make_result(), **base | {"dataset_name": "c4"})
    write_llc_to_model_card(tmp_path, make_result(seed=1), **base)
    entries = read_llc_from_model_card(tmp_path)
    keys = [(e["dataset"], e["dataset_split"], e["seed"]) for e in entries]
    assert keys == [
        ("wikitext", "train", 0),
        ("wikitext", "test", 0),
        ("c4", "train", 0),
        ("wikitext", "train", 1),
    ]
    text = (tmp_path / "README.md").read_text()
    meta, _, body = split_card(text)
    assert body.count("## Local Learning Coefficient") == 1
    table_rows = [ln for ln in body.splitlines() if ln.startswith("| ") and "Dataset" not in ln]
    assert len(table_rows) == 4
    # same dataset/config/split share one model-index result (as ModelCardData groups them)
    results = meta["model-index"][0]["results"]
    assert [len(r["metrics"]) for r in results] == [2, 1, 1]
    # a ModelCard load + save leaves the model-index as we wrote it
    card = ModelCard(text)
    assert yaml.safe_load(card.data.to_yaml())["model-index"] == meta["model-index"]
    assert len(card.data.eval_results) == 4


def test_plot_link_relative_and_replaced(tmp_path):
    plot = tmp_path / "plots" / "trace.png"
    kwargs = dict(dataset_name="wikitext", date=DATE)
    write_llc_to_model_card(tmp_path, make_result(), plot_path=plot, **kwargs)
    write_llc_to_model_card(tmp_path, make_result(), plot_path=plot, **kwargs)
    body = split_card((tmp_path / "README.md").read_text())[2]
    assert body.count("](plots/trace.png)") == 1
    assert read_llc_from_model_card(tmp_path)[0]["plot"] == "plots/trace.png"


def test_text_after_section_preserved(tmp_path):
    readme = tmp_path / "card.md"
    write_llc_to_model_card(readme, make_result(), dataset_name="d", date=DATE)
    readme.write_text(readme.read_text() + "\n## Citation\n\nplease cite\n")
    write_llc_to_model_card(readme, make_result(llc=1.0), dataset_name="d", date=DATE)
    text = readme.read_text()
    assert text.endswith(SECTION_END + "\n\n## Citation\n\nplease cite\n")
    assert read_llc_from_model_card(readme)[0]["value"] == 1.0


def test_card_without_front_matter(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Plain card\n\nNo metadata here.\n")
    write_llc_to_model_card(tmp_path, make_result(), dataset_name="d", date=DATE)
    meta, _, body = split_card(readme.read_text())
    assert body.startswith("# Plain card\n\nNo metadata here.\n")
    assert len(meta["hf_llc"]) == 1


def test_dict_result_accepted(tmp_path):
    result = make_result()
    write_llc_to_model_card(tmp_path, result.to_dict(), dataset_name="d", date=DATE)
    from_dict = (tmp_path / "README.md").read_bytes()
    (tmp_path / "README.md").unlink()
    write_llc_to_model_card(tmp_path, result, dataset_name="d", date=DATE)
    assert (tmp_path / "README.md").read_bytes() == from_dict


@pytest.mark.parametrize(
    "text, problem",
    [
        ("---\nlicense: mit\ntags: [a, b\n---\n# body\n", "malformed"),
        ("---\n- just\n- a list\n---\n# body\n", "not a mapping"),
        ("---\nmodel-index:\n- results: []\n---\n# body\n", "model_index"),
        ("---\nhf_llc: 3\n---\n# body\n", "hf_llc"),
        (f"---\nlicense: mit\n---\n{SECTION_START}\n# body\n", "LLC section"),
    ],
)
def test_malformed_card_raises_and_is_untouched(tmp_path, text, problem):
    readme = tmp_path / "README.md"
    readme.write_bytes(text.encode())
    with pytest.raises(ValueError) as info:
        write_llc_to_model_card(tmp_path, make_result(), dataset_name="d", date=DATE)
    assert str(readme) in str(info.value)
    assert problem in str(info.value)
    assert readme.read_bytes() == text.encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]


def test_non_finite_llc_rejected(tmp_path):
    result = make_result()
    result.llc_mean = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        write_llc_to_model_card(tmp_path, result, dataset_name="d")
    assert not (tmp_path / "README.md").exists()


def test_read_missing_card_is_empty(tmp_path):
    assert read_llc_from_model_card(tmp_path) == []


def test_crlf_card_keeps_line_endings(tmp_path):
    readme = tmp_path / "README.md"
    original = RICH.replace("\n", "\r\n").encode()
    readme.write_bytes(original)
    write_llc_to_model_card(tmp_path, make_result(), dataset_name="d", date=DATE)
    data = readme.read_bytes()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert data.split(b"model-index:")[0] == original.split(b"model-index:")[0]
    assert len(read_llc_from_model_card(tmp_path)) == 1


def test_flow_style_front_matter_falls_back_to_full_dump(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("---\n{license: mit, tags: [a, b]}\n---\nbody\n")
    write_llc_to_model_card(tmp_path, make_result(), dataset_name="d", date=DATE)
    meta, _, body = split_card(readme.read_text())
    assert meta["license"] == "mit" and meta["tags"] == ["a", "b"]
    assert list(meta)[:2] == ["license", "tags"]
    assert body.startswith("body\n") and len(meta["hf_llc"]) == 1


def test_new_convergence_statistics_reach_the_card(tmp_path):
    """A result with the rank-normalized R-hat and bulk/tail ESS (and none of the old keys)
    puts exactly those names in the card's diagnostics summary."""
    result = make_result()
    diag = result.diagnostics
    del diag["rhat"], diag["ess"]
    diag.update(rhat_rank=np.float64(1.02), ess_bulk=310.0, ess_tail=np.float64(420.5))
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    path = write_llc_to_model_card(model_dir, result, dataset_name="d", date=DATE)
    meta, _, _ = split_card(path.read_text())
    summary = meta["hf_llc"][0]["diagnostics"]
    assert summary["rhat_rank"] == 1.02 and type(summary["rhat_rank"]) is float
    assert summary["ess_bulk"] == 310.0 and summary["ess_tail"] == 420.5
    assert "rhat" not in summary and "ess" not in summary

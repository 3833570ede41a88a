"""Property tests (hypothesis) of the model-card writer.

For arbitrary existing cards (YAML metadata of nested mappings/lists/unicode strings, with or
without another tool's ``model-index``; markdown bodies with ``---`` lines, code fences, or
empty; or no front matter at all) and arbitrary LLC results:

- writing keeps every other metadata key, its value and its YAML text, in order, and the body
  byte for byte (the LLC section is appended after it);
- other tools' ``model-index`` results are kept as they were;
- writing twice gives the same bytes as writing once (idempotent);
- writing another value for the same dataset and settings, then the first again, gives the
  bytes of the first write (only the LLC part changes);
- reading back gives the written estimate.

Cards huggingface_hub itself cannot load (e.g. ``tags: 0``) must instead give a clear
``ValueError`` and stay as they were. The ``ci`` profile (derandomized, 100 examples per
property) is the default, so runs are deterministic; ``HYPOTHESIS_PROFILE=explore`` (300,
no shrinking) or ``dev`` (1000) look at new examples.
"""

from __future__ import annotations

import os
import re

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

from hf_llc.modelcard import (
    LLC_TASK_TYPE,
    SECTION_END,
    SECTION_START,
    read_llc_from_model_card,
    write_llc_to_model_card,
)

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(  # quick exploration on a busy machine: report without shrinking
    "explore",
    max_examples=300,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
settings.register_profile(
    "dev", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DATE = "2024-05-01T12:00:00Z"
LLC_KEYS = ("model-index", "hf_llc")
# Keys huggingface_hub's ModelCardData interprets itself (eval results live in model-index).
RESERVED = {"model-index", "hf_llc", "eval_results", "model_name"}

# --------------------------------------------------------------------------- strategies

# Printable text incl. unicode, quotes, colons, hashes, dashes; no surrogates or controls.
TEXT_CHARS = st.characters(
    blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufeff\u2028\u2029\x85"
)
tricky = st.sampled_from(
    ["---", "key: value", "'quoted'", '"double"', "# not a comment", "a: b: c", "Ünïcødé ✓", ""]
)
text = st.one_of(st.text(TEXT_CHARS, max_size=20), tricky)
keys = st.one_of(
    st.sampled_from(["license", "tags", "datasets", "language", "widget", "base_model"]),
    st.text(TEXT_CHARS, min_size=1, max_size=12),
).filter(lambda k: k not in RESERVED)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(text, inner, max_size=4)),
    max_leaves=12,
)
metric = st.fixed_dictionaries(
    {"type": st.sampled_from(["accuracy", "perplexity", "f1"]), "value": st.floats(0, 100)},
    optional={"name": text},
)
other_result = st.fixed_dictionaries(
    {
        "task": st.fixed_dictionaries({"type": st.sampled_from(["text-generation", "fill-mask"])}),
        "dataset": st.fixed_dictionaries(
            {"name": st.text(TEXT_CHARS, min_size=1, max_size=10), "type": st.just("wikitext")},
            optional={"split": st.sampled_from(["test", "validation"])},
        ),
        "metrics": st.lists(metric, min_size=1, max_size=2),
    }
)
other_model_index = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.text(TEXT_CHARS, min_size=1, max_size=10),
            "results": st.lists(other_result, min_size=1, max_size=2),
        }
    ),
    min_size=1,
    max_size=2,
    unique_by=lambda block: block["name"],  # model_name must be able to choose a block
)
body_lines = st.one_of(
    st.text(TEXT_CHARS, max_size=30),
    st.sampled_from(
        ["---", "```", "```yaml", "key: value", "# Title", "", "<!-- comment -->", "| a | b |"]
    ),
)
bodies = st.lists(body_lines, max_size=8).map("\n".join)


@st.composite
def cards(draw):
    """(card text, metadata or None, per-key YAML chunks, body) of an existing card."""
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    body = draw(bodies)
    body = body + draw(st.sampled_from(["", "\n"]))
    assume(SECTION_START not in body and SECTION_END not in body)
    if draw(st.booleans()):  # no front matter at all
        assume(not re.match(r"\s*---", body))  # else it would start a front-matter block
        text = body.replace("\n", newline)
        return text, None, [], text
    meta = draw(st.dictionaries(keys, values, max_size=5))
    items = list(meta.items())
    if draw(st.booleans()):
        at = draw(st.integers(0, len(items)))
        items.insert(at, ("model-index", draw(other_model_index)))
    chunks = []
    for key, value in items:
        chunk = yaml.safe_dump(
            {key: value},
            sort_keys=False,
            allow_unicode=draw(st.booleans()),
            default_flow_style=False,
            width=draw(st.sampled_from([40, 80, 1000])),
        )
        if draw(st.booleans()):
            chunk += "# a comment about " + re.sub(r"\s", " ", str(key)) + "\n"
        chunks.append(chunk)
    front = "".join(chunks)
    # The generated YAML must itself say what we mean (PyYAML oddities are not the writer's).
    try:
        assume((yaml.safe_load(front) or {}) == dict(items))
    except yaml.YAMLError:
        assume(False)
    text = f"---\n{front}---\n{body}".replace("\n", newline)
    # ...and the card must split where we built it, the way huggingface_hub splits cards
    # (e.g. after an empty block, a body starting with a "---" line would be read as YAML).
    match = REGEX_YAML_BLOCK.search(text)
    if front:
        assume(match is not None and match.end() == len(text) - len(body.replace("\n", newline)))
    else:
        assume(match is None)
    return (
        text,
        dict(items),
        [c.replace("\n", newline).rstrip("\r\n") for c in chunks],
        body.replace("\n", newline),
    )


finite = st.floats(-1e6, 1e6, allow_nan=False)
results = st.fixed_dictionaries(
    {
        "llc_mean": finite,
        "llc_std": st.one_of(st.none(), st.floats(0, 1e3)),
        "llc_stderr": st.floats(0, 1e3),
        "llc_per_chain": st.lists(finite, min_size=1, max_size=4),
        "init_loss": finite,
        "nbeta": st.floats(1e-3, 1e6),
        "num_samples": st.integers(1, 10**7),
        "num_params": st.integers(1, 10**9),
        "config": st.fixed_dictionaries(
            {
                "num_chains": st.integers(1, 8),
                "num_draws": st.integers(1, 5000),
                "num_burnin": st.integers(0, 5000),
                "seed": st.integers(0, 2**31),
                "step_size": st.one_of(st.just("curvature"), st.floats(1e-8, 1.0)),
            }
        ),
        "diagnostics": st.fixed_dictionaries(
            {"num_chains_used": st.integers(1, 8), "rhat": st.one_of(st.none(), finite)}
        ),
    }
)
datasets = st.fixed_dictionaries(
    {
        # Hub-like ids: a local path ("/…", "~…", "./…") is written as its file name instead.
        "dataset_name": st.text(TEXT_CHARS, min_size=1, max_size=15).filter(
            lambda name: not name.startswith(("/", "~", ".")) and not os.path.exists(name)
        ),
        "dataset_split": st.sampled_from(["train", "test", "validation[:10%]"]),
        "dataset_config": st.one_of(st.none(), st.text(TEXT_CHARS, min_size=1, max_size=8)),
    }
)


# --------------------------------------------------------------------------- helpers


def _split(text: str) -> tuple[dict, str, str]:
    """(metadata, YAML text, body) of a card the writer produced (always has front matter)."""
    nl = "\r\n" if "\r\n" in text else "\n"
    assert text.startswith("---" + nl)
    front, body = text[3 + len(nl) :].split(f"{nl}---{nl}", 1)
    return yaml.safe_load(front), front, body


def _others(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k not in LLC_KEYS}


def _non_llc_results(model_index) -> list:
    return [
        [r for r in block.get("results", []) if (r.get("task") or {}).get("type") != LLC_TASK_TYPE]
        for block in model_index or []
    ]


def _hub_can_read(text: str) -> bool:
    """Whether huggingface_hub loads the card (the writer refuses those it cannot)."""
    try:
        ModelCard(text)
    except Exception:
        return False
    return True


def _write(tmp_path, result, ds) -> bytes:
    """Write into the card; with several ``model-index`` models, into the first one."""
    name = "m"
    readme = tmp_path / "README.md"
    if readme.exists():
        match = REGEX_YAML_BLOCK.search(readme.read_bytes().decode())
        try:
            meta = yaml.safe_load(match.group(2)) if match else None
        except yaml.YAMLError:
            meta = None  # a card the writer refuses anyway
        blocks = meta.get("model-index") if isinstance(meta, dict) else None
        if isinstance(blocks, list) and len(blocks) > 1 and isinstance(blocks[0], dict):
            name = blocks[0]["name"]
    write_llc_to_model_card(tmp_path, result, date=DATE, model_name=name, **ds)
    return (tmp_path / "README.md").read_bytes()


def _fresh_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("card")


# --------------------------------------------------------------------------- properties


@given(card=cards(), result=results, ds=datasets)
def test_writing_keeps_everything_else_and_is_idempotent(tmp_path_factory, card, result, ds):
    text, meta, chunks, body = card
    folder = _fresh_dir(tmp_path_factory)
    readme = folder / "README.md"
    readme.write_bytes(text.encode())
    if not _hub_can_read(text):  # e.g. `tags: 0`: a clear error, the card left as it was
        with pytest.raises(ValueError, match="malformed model card metadata"):
            _write(folder, result, ds)
        assert readme.read_bytes() == text.encode()
        assert [p.name for p in folder.iterdir()] == ["README.md"]
        return
    assert read_llc_from_model_card(folder) == []

    first = _write(folder, result, ds)
    new_meta, new_front, new_body = _split(first.decode())

    # every other key: same value, same order, same YAML text (chunks in order)
    assert _others(new_meta) == _others(meta or {})
    assert list(_others(new_meta)) == list(_others(meta or {}))
    position = 0
    for chunk in chunks:
        if chunk.startswith("model-index:"):
            continue
        found = new_front.find(chunk, position)
        assert found >= 0, (chunk, new_front)
        position = found + len(chunk)
    # other tools' model-index results are kept, block by block
    before = _non_llc_results((meta or {}).get("model-index"))
    after = _non_llc_results(new_meta["model-index"])
    assert after[: len(before)] == before and not any(after[len(before) :])

    # the body is kept byte for byte; the LLC section follows it
    assert new_body.startswith(body)
    rest = new_body[len(body) :].strip()
    assert rest.startswith(SECTION_START) and rest.endswith(SECTION_END)

    # idempotent
    assert _write(folder, result, ds) == first

    # read back
    (entry,) = read_llc_from_model_card(folder)
    assert entry["value"] == result["llc_mean"]
    assert entry["std"] == result["llc_std"]
    assert entry["per_chain"] == result["llc_per_chain"]
    assert entry["nbeta"] == result["nbeta"] and entry["num_samples"] == result["num_samples"]
    assert entry["settings"] == result["config"]
    assert (entry["dataset"], entry["dataset_split"], entry["dataset_config"]) == (
        ds["dataset_name"],
        ds["dataset_split"],
        ds["dataset_config"],
    )


@given(card=cards(), result=results, ds=datasets, other_value=finite, ds2=datasets)
def test_rewriting_replaces_only_the_llc_part(tmp_path_factory, card, result, ds, other_value, ds2):
    text, meta, _, body = card
    assume(other_value != result["llc_mean"] and _hub_can_read(text))
    folder = _fresh_dir(tmp_path_factory)
    (folder / "README.md").write_bytes(text.encode())
    first = _write(folder, result, ds)

    changed = dict(result, llc_mean=other_value)
    second = _write(folder, changed, ds)
    (entry,) = read_llc_from_model_card(folder)
    assert entry["value"] == other_value
    meta1, _, body1 = _split(first.decode())
    meta2, _, body2 = _split(second.decode())
    assert _others(meta2) == _others(meta1)
    assert _non_llc_results(meta2["model-index"]) == _non_llc_results(meta1["model-index"])
    assert body2.startswith(body) and body1.startswith(body)
    # ...and writing the first value again restores the first card exactly
    assert _write(folder, result, ds) == first

    # another dataset adds an entry and keeps the first one as it was
    key = lambda d: (d["dataset_name"], d["dataset_config"], d["dataset_split"])  # noqa: E731
    assume(key(ds2) != key(ds))
    _write(folder, changed, ds2)
    entries = read_llc_from_model_card(folder)
    assert [e["value"] for e in entries] == [result["llc_mean"], other_value]
    assert _others(_split((folder / "README.md").read_bytes().decode())[0]) == _others(meta1)


def test_profile_is_deterministic():
    """CI runs the derandomized profile unless a developer asks for another."""
    if os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci":
        pytest.skip("a non-default HYPOTHESIS_PROFILE is set")
    assert settings.default.derandomize and settings.default.max_examples == 100


# --------------------------------------------------------------------------- what they found

RESULT = {
    "llc_mean": 2.5,
    "llc_std": 0.1,
    "llc_stderr": 0.05,
    "llc_per_chain": [2.4, 2.6],
    "nbeta": 10.0,
    "num_samples": 100,
    "config": {"num_chains": 2, "num_draws": 10, "seed": 0},
}


def test_empty_front_matter_block_is_replaced(tmp_path):
    """'---' directly followed by '---' is empty metadata (huggingface_hub's pattern misses it);
    it used to stay in the body under the new metadata, rendering as two rules."""
    (tmp_path / "README.md").write_text("---\n---\n# Title\n")
    text = _write(tmp_path, RESULT, {"dataset_name": "d"}).decode()
    meta, _, body = _split(text)
    assert set(meta) == {"model-index", "hf_llc"}
    assert body.startswith("# Title\n\n" + SECTION_START)


def test_card_huggingface_hub_cannot_read_is_refused_cleanly(tmp_path):
    """`tags: 0` used to escape as a TypeError from inside huggingface_hub."""
    card = "---\ntags: 0\n---\n# Title\n"
    (tmp_path / "README.md").write_text(card)
    with pytest.raises(ValueError, match=r"README\.md: malformed model card metadata.*Fix"):
        _write(tmp_path, RESULT, {"dataset_name": "d"})
    with pytest.raises(ValueError, match="malformed model card metadata"):
        read_llc_from_model_card(tmp_path)
    assert (tmp_path / "README.md").read_text() == card

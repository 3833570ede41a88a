"""The model card on huggingface_hub's types, and the Hub writes (against a mocked HfApi).

No test here reaches the Hub: ``hf_llc.modelcard.HfApi`` is replaced by :class:`FakeHub`,
which serves README.md from memory and records the commit it is asked to make.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from huggingface_hub import CommitInfo, EvalResult, ModelCard, ModelCardData  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)

import hf_llc  # noqa: E402
from hf_llc import LLCResult  # noqa: E402
from hf_llc import modelcard as mc  # noqa: E402
from hf_llc.modelcard import (  # noqa: E402
    LLC_METRIC_TYPE,
    LLC_TASK_TYPE,
    SECTION_START,
    check_hub_model_card,
    llc_eval_result,
    push_llc_to_hub,
    read_llc_from_model_card,
    update_llc_card_text,
    write_llc_to_model_card,
)

DATE = "2024-05-01T12:00:00Z"
REPO = "someone/tiny-model"
SHA = "0123456789abcdef0123456789abcdef01234567"

FRONT = """\
# kept comment
license: apache-2.0
tags: [text-generation, "quoted tag"]
model-index:
- name: tiny-model
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
widget:
  - text: "Hello"
"""
BODY = "\n# Tiny model\n\nHand-written text | with a pipe.\n"
CARD = f"---\n{FRONT}---\n{BODY}"


def make_result(llc=2.5, seed=0, diagnostics=None) -> LLCResult:
    per_chain = [llc - 0.1, llc + 0.1]
    return LLCResult(
        llc_mean=llc,
        llc_std=float(np.std(per_chain, ddof=1)),
        llc_stderr=0.05,
        llc_per_chain=per_chain,
        loss_trace=np.random.default_rng(seed).normal(1.0, 0.01, size=(2, 10)),
        init_loss=0.9,
        nbeta=20.0,
        num_samples=100,
        num_params=50,
        config={"num_chains": 2, "num_draws": 10, "num_burnin": 5, "seed": seed},
        diagnostics={"num_chains_used": 2, "divergences": [], "retries": []} | (diagnostics or {}),
    )


def _response(status=404):
    """What huggingface_hub's HTTP errors read from a response, without a network."""
    return SimpleNamespace(status_code=status, headers={}, request=None)


class FakeHub:
    """Stands in for ``huggingface_hub.HfApi``: one repo, its files in memory."""

    def __init__(self, tmp_path, files=None, repo=REPO, sha=SHA):
        self.tmp_path, self.files, self.repo, self.sha = tmp_path, dict(files or {}), repo, sha
        self.tokens, self.downloads, self.commits = [], [], []

    def __call__(self, token=None):  # HfApi(token=...)
        self.tokens.append(token)
        return self

    def model_info(self, repo_id, *, revision=None, **_):
        if repo_id != self.repo:
            raise RepositoryNotFoundError("404 repo", response=_response())
        return SimpleNamespace(sha=self.sha)

    def hf_hub_download(self, repo_id, filename, *, revision=None, **_):
        self.downloads.append((repo_id, filename, revision))
        if repo_id != self.repo:
            raise RepositoryNotFoundError("404 repo", response=_response())
        if filename not in self.files:
            raise RemoteEntryNotFoundError("404 entry", response=_response())
        path = self.tmp_path / f"download-{len(self.downloads)}-{filename}"
        path.write_bytes(self.files[filename])
        return str(path)

    def create_commit(self, repo_id, operations, **kwargs):
        files = {}
        for op in operations:
            with op.as_file() as fh:
                files[op.path_in_repo] = fh.read()
        self.commits.append({"repo_id": repo_id, "files": files, **kwargs})
        pr = "https://huggingface.co/someone/tiny-model/discussions/1"
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{'f' * 40}",
            commit_message=kwargs["commit_message"],
            commit_description=kwargs.get("commit_description") or "",
            oid="f" * 40,
            pr_url=pr if kwargs.get("create_pr") else None,
        )


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub(tmp_path, {"README.md": CARD.encode()})
    monkeypatch.setattr(mc, "HfApi", fake)
    return fake


def _split(text: str):
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), front, body


# --------------------------------------------------------------------------- push_llc_to_hub


def test_push_composes_one_pull_request_commit(hub, tmp_path):
    plot = tmp_path / "trace.png"
    plot.write_bytes(b"\x89PNG fake image bytes")
    info = push_llc_to_hub(
        REPO, make_result(), dataset_name="wikitext", plot_path=plot, token="hf_x", date=DATE
    )
    (commit,) = hub.commits
    assert commit["repo_id"] == REPO
    assert commit["create_pr"] is True and commit["revision"] is None
    assert commit["parent_commit"] == SHA  # the card is updated from the commit it was read at
    assert hub.downloads == [(REPO, "README.md", SHA)]
    assert hub.tokens == ["hf_x"]
    assert list(commit["files"]) == ["README.md", "trace.png"]
    assert commit["files"]["trace.png"] == plot.read_bytes()
    assert "wikitext" in commit["commit_message"] and "2.5" in commit["commit_message"]
    assert info.pr_url.endswith("/discussions/1")

    text = commit["files"]["README.md"].decode("utf-8")
    meta, front, body = _split(text)
    # everything else is kept byte for byte: the other keys' YAML text and the body
    assert front.startswith(FRONT.split("model-index:")[0])
    assert 'widget:\n  - text: "Hello"' in front
    assert body.startswith(BODY) and SECTION_START in body[len(BODY) :]
    assert "](trace.png)" in body  # the uploaded plot, linked by its path in the repo
    # the LLC is a model-index entry huggingface_hub reads back, beside the perplexity one
    card = ModelCard(text)
    assert [e.metric_type for e in card.data.eval_results] == ["perplexity", LLC_METRIC_TYPE]
    llc = card.data.eval_results[1]
    assert (llc.task_type, llc.dataset_type, llc.metric_value) == (
        LLC_TASK_TYPE,
        "wikitext",
        2.5,
    )
    (entry,) = meta["hf_llc"]
    assert entry["value"] == 2.5 and entry["plot"] == "trace.png"


def test_push_writes_the_same_card_as_a_local_write(hub, tmp_path):
    folder = tmp_path / "tiny-model"
    (folder / "plots").mkdir(parents=True)
    (folder / "plots" / "trace.png").write_bytes(b"png")
    (folder / "README.md").write_text(CARD)
    kwargs = dict(dataset_name="wikitext", dataset_config="wt2", date=DATE)
    write_llc_to_model_card(folder, make_result(), plot_path=folder / "plots/trace.png", **kwargs)
    push_llc_to_hub(
        REPO,
        make_result(),
        plot_path=folder / "plots" / "trace.png",
        plot_path_in_repo="plots/trace.png",
        **kwargs,
    )
    assert hub.commits[0]["files"]["README.md"] == (folder / "README.md").read_bytes()


def test_push_options_reach_create_commit(hub):
    push_llc_to_hub(
        REPO,
        make_result(),
        dataset_name="wikitext",
        revision="dev",
        create_pr=False,
        commit_message="LLC for the dev branch",
        commit_description="measured on CPU",
        date=DATE,
    )
    (commit,) = hub.commits
    assert (commit["revision"], commit["create_pr"]) == ("dev", False)
    assert commit["commit_message"] == "LLC for the dev branch"
    assert commit["commit_description"] == "measured on CPU"
    assert list(commit["files"]) == ["README.md"]


def test_push_to_repo_without_readme_creates_a_card(hub):
    del hub.files["README.md"]
    push_llc_to_hub(REPO, make_result(), dataset_name="wikitext", date=DATE)
    text = hub.commits[0]["files"]["README.md"].decode()
    meta, _, body = _split(text)
    assert "# tiny-model" in body
    assert meta["model-index"][0]["name"] == "tiny-model"  # the repo's name
    assert ModelCard(text).data.eval_results[0].metric_value == 2.5


def test_push_is_idempotent_on_the_card(hub):
    push_llc_to_hub(REPO, make_result(), dataset_name="wikitext", date=DATE)
    first = hub.commits[0]["files"]["README.md"]
    hub.files["README.md"] = first  # as if the pull request was merged
    push_llc_to_hub(REPO, make_result(), dataset_name="wikitext", date=DATE)
    assert hub.commits[1]["files"]["README.md"] == first


def test_push_refuses_a_malformed_card_before_committing(hub):
    hub.files["README.md"] = b"---\nhf_llc: 3\n---\n# body\n"
    with pytest.raises(ValueError, match=f"README.md of {REPO}.*hf_llc"):
        push_llc_to_hub(REPO, make_result(), dataset_name="d", date=DATE)
    assert hub.commits == []


def test_push_to_unknown_repo_is_a_clear_error(hub):
    with pytest.raises(ValueError, match="cannot read Hub model repo other/repo.*repo id"):
        push_llc_to_hub("other/repo", make_result(), dataset_name="d", date=DATE)
    assert hub.commits == []


def test_push_is_exported_lazily():
    assert hf_llc.push_llc_to_hub is push_llc_to_hub
    assert "push_llc_to_hub" in hf_llc.__all__


# --------------------------------------------------------------------------- check / read


def test_check_hub_model_card(hub):
    assert check_hub_model_card(REPO, token="hf_x") == SHA
    hub.files["README.md"] = b"---\ntags: [a, b\n---\n# body\n"
    with pytest.raises(ValueError, match="malformed model card metadata"):
        check_hub_model_card(REPO, token="hf_x")
    del hub.files["README.md"]
    assert check_hub_model_card(REPO, token="hf_x") == SHA  # no card yet: one will be made
    with pytest.raises(ValueError, match="other/repo"):
        check_hub_model_card("other/repo", token="hf_x")


def test_check_hub_model_card_chooses_the_model_index_block(hub):
    two = (
        "---\nmodel-index:\n"
        "- name: a\n  results:\n  - task: {type: t}\n    dataset: {name: d, type: d}\n"
        "    metrics: [{type: acc, value: 1}]\n"
        "- name: b\n  results:\n  - task: {type: t}\n    dataset: {name: d, type: d}\n"
        "    metrics: [{type: acc, value: 2}]\n---\n"
    )
    hub.files["README.md"] = two.encode()
    with pytest.raises(ValueError, match="model_name"):
        check_hub_model_card(REPO, token="hf_x")
    assert check_hub_model_card(REPO, token="hf_x", model_name="b") == SHA


def test_check_hub_model_card_needs_a_token(hub, monkeypatch):
    monkeypatch.setattr(mc, "_saved_token", lambda: None)
    with pytest.raises(ValueError, match="needs a Hugging Face token"):
        check_hub_model_card(REPO)
    monkeypatch.setattr(mc, "_saved_token", lambda: "hf_saved")
    assert check_hub_model_card(REPO) == SHA


def test_read_llc_from_hub_repo(hub):
    assert read_llc_from_model_card(REPO) == []  # a card without LLC entries
    push_llc_to_hub(REPO, make_result(llc=3.5), dataset_name="wikitext", date=DATE)
    hub.files["README.md"] = hub.commits[0]["files"]["README.md"]
    (entry,) = read_llc_from_model_card(REPO, revision="v1", token="hf_y")
    assert entry["value"] == 3.5 and entry["dataset"] == "wikitext"
    assert hub.downloads[-1] == (REPO, "README.md", "v1") and hub.tokens[-1] == "hf_y"
    del hub.files["README.md"]
    assert read_llc_from_model_card(REPO) == []


def test_read_prefers_an_existing_local_folder(hub, tmp_path, monkeypatch):
    folder = tmp_path / "someone" / "tiny-model"
    folder.mkdir(parents=True)
    write_llc_to_model_card(folder, make_result(llc=7.0), dataset_name="d", date=DATE)
    monkeypatch.chdir(tmp_path)  # "someone/tiny-model" is now a local folder too
    (entry,) = read_llc_from_model_card(REPO)
    assert entry["value"] == 7.0 and hub.downloads == []


# --------------------------------------------------------------------------- EvalResult


def test_llc_eval_result_is_huggingface_hubs_type():
    ev = llc_eval_result(make_result(), dataset_name="wikitext", dataset_config="wt2")
    assert isinstance(ev, EvalResult)
    assert (ev.task_type, ev.metric_type, ev.metric_value) == (LLC_TASK_TYPE, "llc", 2.5)
    assert (ev.dataset_type, ev.dataset_name, ev.dataset_config, ev.dataset_split) == (
        "wikitext",
        "wikitext",
        "wt2",
        "train",
    )
    assert ev.metric_args["nbeta"] == 20.0 and ev.metric_args["num_chains"] == 2
    assert ev.metric_config.startswith("sgld-")
    # huggingface_hub builds a card from it by itself
    data = ModelCardData(model_name="m", eval_results=[ev]).to_dict()
    assert data["model-index"][0]["results"][0]["metrics"][0]["value"] == 2.5


def test_dataset_and_adapter_recorded_by_the_result():
    result = make_result(
        diagnostics={
            "data": {
                "dataset": {"name": "org/corpus", "config": "en", "split": "val", "revision": "r1"}
            },
            "adapter": {"peft_type": "LORA", "base_model": "org/base", "r": 8},
        }
    )
    text = update_llc_card_text(None, result, default_model_name="m", date=DATE)
    meta, _, _ = _split(text)
    (entry,) = meta["hf_llc"]
    assert (entry["dataset"], entry["dataset_config"], entry["dataset_split"]) == (
        "org/corpus",
        "en",
        "val",
    )
    assert entry["dataset_revision"] == "r1"
    assert entry["adapter"] == {"peft_type": "LORA", "base_model": "org/base", "r": 8}
    (ev,) = ModelCard(text).data.eval_results
    assert (ev.dataset_type, ev.dataset_revision) == ("org/corpus", "r1")
    # an argument given wins over the recorded value, field by field
    ev = llc_eval_result(result, dataset_split="test")
    assert (ev.dataset_name, ev.dataset_config, ev.dataset_split) == ("org/corpus", "en", "test")


def test_estimates_on_other_dataset_revisions_are_other_entries():
    def on(revision):
        data = {"dataset": {"name": "org/corpus", "revision": revision}}
        return make_result(diagnostics={"data": data})

    text = update_llc_card_text(None, on("r1"), date=DATE)
    text = update_llc_card_text(text, on("r2"), date=DATE)
    text = update_llc_card_text(text, on("r1"), date=DATE)  # replaces the first
    meta, _, _ = _split(text)
    assert [e["dataset_revision"] for e in meta["hf_llc"]] == ["r1", "r2"]
    revisions = [r["dataset"].get("revision") for r in meta["model-index"][0]["results"]]
    assert revisions == ["r1", "r2"]


def test_without_a_dataset_name_anywhere_is_refused():
    with pytest.raises(ValueError, match="dataset_name"):
        update_llc_card_text(None, make_result(), date=DATE)


def test_local_dataset_path_never_becomes_dataset_type(tmp_path):
    data_file = tmp_path / "secret" / "train.jsonl"
    data_file.parent.mkdir()
    data_file.write_text("{}\n")
    result = make_result(diagnostics={"data": {"dataset": {"name": str(data_file)}}})
    text = update_llc_card_text(None, result, date=DATE)
    (ev,) = ModelCard(text).data.eval_results
    assert ev.dataset_type == "train.jsonl" and ev.dataset_name == "train.jsonl"
    assert str(tmp_path) not in text


@pytest.mark.parametrize("name", ["data/train.jsonl", "./corpus", "../corpora/dev.csv"])
def test_recorded_local_path_not_found_here_is_not_a_dataset_type(name):
    """A result read back elsewhere records a path that does not exist here."""
    result = make_result(diagnostics={"data": {"dataset": {"name": name}}})
    ev = llc_eval_result(result)
    assert "/" not in ev.dataset_type and ev.dataset_type == name.rsplit("/", 1)[-1]


def test_llc_results_keep_their_place_among_other_results():
    """LLC results sit where the first one was; other tasks' results keep order and values."""
    text = update_llc_card_text(CARD, make_result(), dataset_name="a", date=DATE)
    meta, _, _ = _split(text)
    results = meta["model-index"][0]["results"]
    results.append({"task": {"type": "fill-mask"}, "dataset": {"name": "x", "type": "x"},
                    "metrics": [{"type": "acc", "value": 0.5}]})  # fmt: skip
    meta["model-index"][0]["results"] = results
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + _split(text)[2]
    text = update_llc_card_text(text, make_result(seed=1), dataset_name="b", date=DATE)
    types = [r["task"]["type"] for r in _split(text)[0]["model-index"][0]["results"]]
    assert types == ["text-generation", LLC_TASK_TYPE, LLC_TASK_TYPE, "fill-mask"]
    values = [e.metric_value for e in ModelCard(text).data.eval_results]
    assert values == [21.5, 2.5, 2.5, 0.5]

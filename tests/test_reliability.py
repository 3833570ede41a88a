"""Nothing lost, nothing misread (issue 13, part A), through the Python API and the CLI.

1. one run at a time on an output folder (an atomic lock; stale locks of dead processes);
2. outputs over symbolic links and special files (never replaced by a regular file);
3. every output checked before sampling, the result JSON written first, a full disk named;
4. model cards: a UTF-8 BOM, several ``model-index`` models, no local absolute paths,
   read-only and symlinked README.md;
5. checkpoint folder hygiene: orphaned temporary files, the ``step_size="auto"`` calibration
   kept for a resume, Ctrl-C during the calibration;
6. flags that would do nothing are refused;
7. the tests read nothing outside the repository.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import hf_llc.calibration
import hf_llc.estimator
from hf_llc import EstimateInterrupted, SamplerConfig, estimate_llc, make_dln_problem
from hf_llc.checkpoint import LOCK, OutputDirLocked, RunCheckpoint
from hf_llc.cli import main
from hf_llc.modelcard import read_llc_from_model_card, write_llc_to_model_card
from hf_llc.serialization import atomic_write, write_json

CFG = SamplerConfig(num_chains=2, num_burnin=20, num_draws=20, batch_size=50)
CLI_SHORT = ["--num-chains", "2", "--num-burnin", "20", "--num-draws", "20"]
CLI_SHORT += ["--batch-size", "50", "--quiet"]
CARD = "---\nlicense: mit\ntags:\n- test\n---\n\n# A model\n\nSome text.\n"
TWO_MODELS = """---
license: mit
model-index:
- name: model-a
  results:
  - task: {type: text-generation}
    dataset: {name: wikitext, type: wikitext}
    metrics:
    - {type: perplexity, value: 10.0}
- name: model-b
  results:
  - task: {type: text-generation}
    dataset: {name: wikitext, type: wikitext}
    metrics:
    - {type: perplexity, value: 12.0}
---

# Two models
"""


@pytest.fixture(scope="module")
def dln():
    model, data, _ = make_dln_problem([3, 2, 3], None, "full_rank", num_samples=200, seed=0)
    return model, data


@pytest.fixture(scope="module")
def result(dln):
    model, data = dln
    return estimate_llc(model, data, CFG, progress=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, dln):
    """The DLN problem as a checkpoint folder and a save_to_disk dataset, for the CLI."""
    model, data = dln
    root = tmp_path_factory.mktemp("saved")
    model.save_pretrained(root / "model")
    data.save_to_disk(str(root / "data"))
    (root / "data.jsonl").write_text('{"x": 1}\n')
    return root


def _cli(root: Path, *extra: str, model: Path | None = None) -> list[str]:
    # The DLN architecture is registered by importing hf_llc: loading it needs
    # --trust-remote-code (no code runs).
    model = model if model is not None else root / "model"
    return ["estimate", str(model), "--trust-remote-code", "--dataset", str(root / "data")] + [
        *CLI_SHORT,
        *extra,
    ]


def _cli_error(argv: list[str], capsys) -> str:
    """Run the CLI, expect exit 2 with one ``error:`` line and no traceback; return it."""
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if the CLI gets as far as sampling."""

    def sampled(*args, **kwargs):
        raise AssertionError("sampling started before the output checks")

    monkeypatch.setattr(hf_llc.estimator, "estimate_llc", sampled)
    monkeypatch.setattr(hf_llc.calibration, "calibrate_step_size", sampled)


def _card_dir(tmp: Path, text: str = CARD, name: str = "card") -> Path:
    folder = tmp / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(text, encoding="utf-8")
    return folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(folder: Path, pid: int, host: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK
    lock.write_text(
        json.dumps(
            {"pid": pid, "host": host or socket.gethostname(), "started": "2026-01-01T00:00:00"}
        )
    )
    return lock


# --------------------------------------------------------------------------- 1. the lock


def test_a_second_run_on_a_locked_folder_is_refused_at_once(tmp_path, dln):
    model, data = dln
    out = tmp_path / "run"
    holder = RunCheckpoint(out)
    holder.acquire()  # a live run (this process) holds the folder
    try:
        with pytest.raises(OutputDirLocked) as excinfo:
            estimate_llc(model, data, CFG, progress=False, output_dir=out)
        message = str(excinfo.value)
        assert str(out) in message and f"process {os.getpid()}" in message
        assert socket.gethostname() in message and "another output_dir" in message
        assert isinstance(excinfo.value, ValueError)
        assert not (out / "manifest.json").exists()  # nothing of the second run was written
    finally:
        holder.release()
    assert not (out / LOCK).exists()
    estimate_llc(model, data, CFG, progress=False, output_dir=out)  # free again
    assert not (out / LOCK).exists()  # released on a normal exit


def test_the_lock_is_held_during_the_run(tmp_path, dln, monkeypatch):
    model, data = dln
    out = tmp_path / "run"
    seen = []
    save_finished = RunCheckpoint.save_finished

    def look(self, res):
        seen.append(json.loads((out / LOCK).read_text()))
        with pytest.raises(OutputDirLocked, match="is in use by another run"):
            RunCheckpoint(out).acquire()
        save_finished(self, res)

    monkeypatch.setattr(RunCheckpoint, "save_finished", look)
    estimate_llc(model, data, CFG, progress=False, output_dir=out)
    assert seen and seen[0]["pid"] == os.getpid() and seen[0]["host"] == socket.gethostname()
    assert "started" in seen[0]
    assert not (out / LOCK).exists()


@dataclass
class LockCase:
    id: str
    lock: Callable[[Path], Path]  # writes a lock into the folder
    error: str | None  # regex of the refusal, or None: taken over with a warning


LOCK_CASES = [
    LockCase("stale-dead-pid", lambda out: _write_lock(out, _dead_pid()), None),
    LockCase(
        "live-pid",
        lambda out: _write_lock(out, os.getppid()),
        r"in use by another run: process \d+ on host .*remove .*\.hf_llc\.lock by hand",
    ),
    LockCase(
        "other-host",
        lambda out: _write_lock(out, _dead_pid(), host="elsewhere.example"),
        r"process \d+ on host 'elsewhere\.example'.*another host.*remove .*\.hf_llc\.lock",
    ),
    LockCase(
        "unreadable",
        lambda out: (out.mkdir(parents=True, exist_ok=True), (out / LOCK).write_text("{"))[0],
        r"is locked by another run \(.*\.hf_llc\.lock is unreadable.*remove .* by hand",
    ),
]


@pytest.mark.parametrize("case", LOCK_CASES, ids=[c.id for c in LOCK_CASES])
def test_existing_locks(case: LockCase, tmp_path, dln, caplog):
    model, data = dln
    out = tmp_path / "run"
    case.lock(out)
    before = (out / LOCK).read_text()
    if case.error is None:
        with caplog.at_level(logging.WARNING, logger="hf_llc"):
            estimate_llc(model, data, CFG, progress=False, output_dir=out)
        assert re.search(r"took over a stale lock .*no longer runs", caplog.text)
        assert (out / "result.json").exists() and not (out / LOCK).exists()
    else:
        with pytest.raises(OutputDirLocked) as excinfo:
            estimate_llc(model, data, CFG, progress=False, output_dir=out)
        assert re.search(case.error, str(excinfo.value), re.S), str(excinfo.value)
        assert str(out) in str(excinfo.value)
        assert (out / LOCK).read_text() == before  # another run's lock is never touched


def test_the_lock_is_released_on_errors_and_interrupts(tmp_path, dln, monkeypatch):
    model, data = dln
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="batch_size=500 is larger than the dataset"):
        estimate_llc(
            model,
            data,
            SamplerConfig(num_chains=2, num_burnin=20, num_draws=20, batch_size=500),
            progress=False,
            output_dir=out,
        )
    assert not out.exists()  # the folder it created stayed empty: removed with the lock

    calls = []
    save = RunCheckpoint.save

    def interrupt(self, state):
        calls.append(state.step)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        save(self, state)

    monkeypatch.setattr(RunCheckpoint, "save", interrupt)
    with pytest.raises(EstimateInterrupted):
        estimate_llc(model, data, CFG, progress=False, output_dir=out, checkpoint_every=5)
    assert not (out / LOCK).exists()
    monkeypatch.undo()
    resumed = estimate_llc(model, data, CFG, progress=False, output_dir=out, resume=True)
    assert resumed.llc_per_chain == estimate_llc(model, data, CFG, progress=False).llc_per_chain


def test_cli_refuses_a_locked_output_dir(tmp_path, saved, capsys):
    out = tmp_path / "run"
    holder = RunCheckpoint(out)
    holder.acquire()
    try:
        line = _cli_error(_cli(saved, "--output-dir", str(out)), capsys)
    finally:
        holder.release()
    assert re.search(rf"output_dir='{re.escape(str(out))}' \(--output-dir\) is in use", line)
    assert f"process {os.getpid()}" in line


# --------------------------------------------------------------------------- 2. special files


def _fifo_reader(path: Path) -> tuple[threading.Thread, list[bytes]]:
    got: list[bytes] = []

    def read():
        with open(path, "rb") as fh:
            got.append(fh.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, got


WRITERS: dict[str, Callable[[object, Path], object]] = {
    "result.save": lambda result, path: result.save(path),
    "write_json": lambda result, path: write_json(path, {"llc": result.llc_mean}),
    "plot": lambda result, path: result.plot(path),
    "atomic_write": lambda result, path: atomic_write(path, b"bytes"),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_symlink_is_written_through(writer, tmp_path, result):
    if writer == "plot":
        pytest.importorskip("matplotlib")
    target = tmp_path / "real" / "out.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    WRITERS[writer](result, link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() != b"old" and target.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.png", "real"]
    assert [p.name for p in target.parent.iterdir()] == ["out.png"]  # no temporary left


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_fifo_is_written_in_place(writer, tmp_path, result):
    if writer == "plot":
        pytest.importorskip("matplotlib")
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    thread, got = _fifo_reader(fifo)
    WRITERS[writer](result, fifo)
    thread.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still a FIFO, not a regular file
    assert got and len(got[0]) > 0
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_a_device_node_is_written_in_place(tmp_path, result):
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # like /dev/null
    except (PermissionError, OSError):
        pytest.skip("cannot create a device node here (needs root)")
    result.save(node)
    write_json(node, {"a": 1})
    assert stat.S_ISCHR(os.stat(node).st_mode)


@dataclass
class RefusedCase:
    id: str
    make: Callable[[Path], Path]  # the target, created in the folder
    message: str


REFUSED = [
    RefusedCase(
        "directory",
        lambda tmp: (tmp / "out.json").mkdir() or tmp / "out.json",
        r"cannot write .*out\.json \(Is a directory\)",
    ),
    RefusedCase(
        "read-only-file",
        lambda tmp: (
            (tmp / "out.json").write_text("keep")
            and (tmp / "out.json").chmod(0o444)
            or tmp / "out.json"
        ),
        r"cannot write .*out\.json \(read-only file\): make it writable",
    ),
    RefusedCase(
        "symlink-to-a-directory",
        lambda tmp: (
            (tmp / "d").mkdir() or (tmp / "out.json").symlink_to(tmp / "d") or tmp / "out.json"
        ),
        r"cannot write .*out\.json \(Is a directory\)",
    ),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_what_is_not_a_writable_regular_file_is_refused(case, tmp_path, result):
    target = case.make(tmp_path)
    before = sorted((p.name, p.is_dir(), p.is_symlink()) for p in tmp_path.iterdir())
    with pytest.raises(OSError) as excinfo:
        result.save(target)
    assert re.search(case.message, str(excinfo.value)), str(excinfo.value)
    assert sorted((p.name, p.is_dir(), p.is_symlink()) for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    "code,words", [(errno.ENOSPC, "disk full"), (errno.EFBIG, "file too large")]
)
def test_a_full_disk_is_named(code, words, tmp_path):
    def write(fh):
        raise OSError(code, os.strerror(code))

    with pytest.raises(OSError) as excinfo:
        atomic_write(tmp_path / "out.json", write)
    assert f"cannot write {tmp_path / 'out.json'} ({words}" in str(excinfo.value)
    assert excinfo.value.errno == code
    assert list(tmp_path.iterdir()) == []


def test_cli_output_through_a_symlink(tmp_path, saved):
    target = tmp_path / "results" / "out.json"
    target.parent.mkdir()
    link = tmp_path / "out.json"
    link.symlink_to(target)
    assert main(_cli(saved, "--output", str(link))) == 0
    assert link.is_symlink() and json.loads(target.read_text())["llc_mean"] is not None


# --------------------------------------------------------------------------- 3. checks first


def _read_only(path: Path) -> Path:
    path.write_text("keep")
    path.chmod(0o444)
    return path


@dataclass
class EarlyCase:
    id: str
    argv: Callable[[Path, Path], list[str]]  # (saved, tmp) -> argv
    message: str


EARLY_CASES = [
    EarlyCase(
        "plot-unknown-suffix",
        lambda saved, tmp: _cli(saved, "--plot", str(tmp / "trace.xyz")),
        r"--plot .*trace\.xyz.*cannot save a plot as 'trace\.xyz': use one of the suffixes",
    ),
    EarlyCase(
        "calibrate-plot-unknown-suffix",
        lambda saved, tmp: ["calibrate", *_cli(saved, "--plot", str(tmp / "t.xyz"))[1:]],
        r"--plot .*t\.xyz.*use one of the suffixes",
    ),
    EarlyCase(
        "output-read-only",
        lambda saved, tmp: _cli(saved, "--output", str(_read_only(tmp / "out.json"))),
        r"--output .*out\.json is read-only; make it writable",
    ),
    EarlyCase(
        "plot-read-only",
        lambda saved, tmp: _cli(saved, "--plot", str(_read_only(tmp / "trace.png"))),
        r"--plot .*trace\.png is read-only",
    ),
    EarlyCase(
        "output-parent-is-a-file",
        lambda saved, tmp: _cli(saved, "--output", str(_read_only(tmp / "f") / "out.json")),
        r"--output .*f/out\.json: .*f is not a writable directory",
    ),
    EarlyCase(
        "output-is-a-directory",
        lambda saved, tmp: _cli(saved, "--output", str(tmp)),
        r"--output .* is a directory; give a file path",
    ),
]


@pytest.mark.parametrize("case", EARLY_CASES, ids=[c.id for c in EARLY_CASES])
def test_cli_outputs_are_checked_before_sampling(case, tmp_path, saved, capsys, no_sampling):
    pytest.importorskip("matplotlib")
    line = _cli_error(case.argv(saved, tmp_path), capsys)
    assert re.search(case.message, line), line


def test_cli_writes_the_json_before_a_failing_plot(tmp_path, saved, capsys, monkeypatch):
    matplotlib = pytest.importorskip("matplotlib.figure")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.Figure, "savefig", full)
    out, plot = tmp_path / "out.json", tmp_path / "trace.png"
    line = _cli_error(_cli(saved, "--output", str(out), "--plot", str(plot)), capsys)
    assert re.search(r"cannot write .*trace\.png \(disk full: No space left on device\)", line)
    assert json.loads(out.read_text())["llc_mean"] is not None  # the estimate is kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


# --------------------------------------------------------------------------- 4. model cards


def _front(text: str) -> dict:
    match = re.match(r"\ufeff?---\n(.*?)\n---\n", text, re.S)
    assert match, text[:200]
    return yaml.safe_load(match.group(1))


def test_card_with_a_bom_keeps_its_metadata_and_the_bom(tmp_path, result):
    folder = _card_dir(tmp_path, "\ufeff" + CARD)
    write_llc_to_model_card(folder, result, dataset_name="d", date="2026-01-01")
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("\ufeff---\n") and text.count("\n---\n") == 1
    meta = _front(text)
    assert meta["license"] == "mit" and meta["tags"] == ["test"]
    assert "hf_llc" in meta and "license: mit" not in text.split("\n---\n", 1)[1]
    assert read_llc_from_model_card(folder)[0]["dataset"] == "d"


@dataclass
class CardNameCase:
    id: str
    text: str
    model_name: str | None
    error: str | None  # regex, or None: written into the block named model_name


CARD_NAME_CASES = [
    CardNameCase("second-of-two", TWO_MODELS, "model-b", None),
    CardNameCase("first-of-two", TWO_MODELS, "model-a", None),
    CardNameCase(
        "no-name", TWO_MODELS, None, r"model-index lists 2 models \('model-a', 'model-b'\)"
    ),
    CardNameCase("unknown-name", TWO_MODELS, "model-c", r"model_name='model-c' .* not in"),
    CardNameCase(
        "ambiguous-name",
        TWO_MODELS.replace("model-b", "model-a"),
        "model-a",
        r"lists 2 models named 'model-a'",
    ),
]


@pytest.mark.parametrize("case", CARD_NAME_CASES, ids=[c.id for c in CARD_NAME_CASES])
def test_model_name_chooses_the_model_index_block(case, tmp_path, result):
    folder = _card_dir(tmp_path, case.text)
    kwargs = dict(dataset_name="d", model_name=case.model_name, date="2026-01-01")
    if case.error is not None:
        with pytest.raises(ValueError) as excinfo:
            write_llc_to_model_card(folder, result, **kwargs)
        assert re.search(case.error, str(excinfo.value)), str(excinfo.value)
        assert "README.md" in str(excinfo.value)
        assert (folder / "README.md").read_text() == case.text
        return
    write_llc_to_model_card(folder, result, **kwargs)
    blocks = _front((folder / "README.md").read_text())["model-index"]
    for block in blocks:
        llc = [r for r in block["results"] if r["task"]["type"] == "local-learning-coefficient"]
        assert bool(llc) == (block["name"] == case.model_name), blocks
    (entry,) = read_llc_from_model_card(folder)
    assert entry["model_name"] == case.model_name


def test_card_records_no_absolute_local_paths(tmp_path, result):
    folder = _card_dir(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "data.jsonl").write_text("{}\n")
    write_llc_to_model_card(
        folder,
        result,
        dataset_name=str(outside / "data.jsonl"),
        plot_path=outside / "trace.png",
        date="2026-01-01",
    )
    text = (folder / "README.md").read_text()
    assert str(tmp_path) not in text
    (entry,) = read_llc_from_model_card(folder)
    assert (entry["dataset"], entry["plot"]) == ("data.jsonl", "trace.png")
    # inside the card's folder: relative to it
    (folder / "plots").mkdir()
    write_llc_to_model_card(
        folder,
        result,
        dataset_name=str(folder / "data"),
        plot_path=folder / "plots" / "trace.png",
        date="2026-01-01",
    )
    entries = read_llc_from_model_card(folder)
    assert (entries[-1]["dataset"], entries[-1]["plot"]) == ("data", "plots/trace.png")
    assert str(tmp_path) not in (folder / "README.md").read_text()


def test_a_read_only_card_is_refused(tmp_path, result):
    folder = _card_dir(tmp_path)
    (folder / "README.md").chmod(0o444)
    with pytest.raises(ValueError, match=r"README\.md is read-only; make it writable"):
        write_llc_to_model_card(folder, result, dataset_name="d")
    assert (folder / "README.md").read_text() == CARD
    assert stat.S_IMODE(os.stat(folder / "README.md").st_mode) == 0o444


def test_a_symlinked_card_is_written_through(tmp_path, result):
    real = _card_dir(tmp_path, name="real")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "README.md").symlink_to(real / "README.md")
    write_llc_to_model_card(folder, result, dataset_name="d", date="2026-01-01")
    assert (folder / "README.md").is_symlink()
    assert read_llc_from_model_card(real)[0]["dataset"] == "d"
    assert _front((real / "README.md").read_text())["license"] == "mit"


def test_a_card_that_is_a_fifo_is_refused(tmp_path, result):
    folder = tmp_path / "model"
    folder.mkdir()
    os.mkfifo(folder / "README.md")
    with pytest.raises(ValueError, match=r"README\.md is not a regular file"):
        write_llc_to_model_card(folder, result, dataset_name="d")
    assert stat.S_ISFIFO(os.stat(folder / "README.md").st_mode)


@dataclass
class CliCardCase:
    id: str
    card: Callable[[Path, Path], Path]  # (saved, tmp) -> the model folder to pass
    extra: list[str]
    message: str


def _model_with_card(saved: Path, tmp: Path, text: str, read_only: bool = False) -> Path:
    folder = tmp / "model"
    folder.mkdir()
    for item in (saved / "model").iterdir():
        (folder / item.name).symlink_to(item)
    (folder / "README.md").write_text(text)
    if read_only:
        (folder / "README.md").chmod(0o444)
    return folder


CLI_CARD_CASES = [
    CliCardCase(
        "read-only-card",
        lambda saved, tmp: _model_with_card(saved, tmp, CARD, read_only=True),
        [],
        r"--write-card .*README\.md is read-only",
    ),
    CliCardCase(
        "two-models-no-name",
        lambda saved, tmp: _model_with_card(saved, tmp, TWO_MODELS),
        [],
        r"README\.md: model-index lists 2 models .*--card-model-name",
    ),
    CliCardCase(
        "two-models-unknown-name",
        lambda saved, tmp: _model_with_card(saved, tmp, TWO_MODELS),
        ["--card-model-name", "nope"],
        r"model_name='nope' \(--card-model-name\) is not in its model-index",
    ),
]


@pytest.mark.parametrize("case", CLI_CARD_CASES, ids=[c.id for c in CLI_CARD_CASES])
def test_cli_card_problems_before_sampling(case, tmp_path, saved, capsys, no_sampling):
    model = case.card(saved, tmp_path)
    before = (model / "README.md").read_text()
    line = _cli_error(_cli(saved, "--write-card", *case.extra, model=model), capsys)
    assert re.search(case.message, line), line
    assert (model / "README.md").read_text() == before


def test_cli_card_model_name_chooses_the_block(tmp_path, saved):
    model = _model_with_card(saved, tmp_path, TWO_MODELS)
    assert main(_cli(saved, "--write-card", "--card-model-name", "model-b", model=model)) == 0
    (entry,) = read_llc_from_model_card(model)
    assert entry["model_name"] == "model-b" and entry["dataset"] == "data"
    assert str(tmp_path) not in (model / "README.md").read_text()


# --------------------------------------------------------------------------- 5. the folder


def test_orphaned_temporary_files_are_removed_when_the_folder_is_opened(tmp_path, dln):
    model, data = dln
    out = tmp_path / "run"
    first = estimate_llc(model, data, CFG, progress=False, output_dir=out)
    orphans = [".result.json.x1y2.tmp", "chain_0.safetensors.tmp4242", "manifest.json.tmp"]
    for name in orphans:
        (out / name).write_text("half")
    keep = out / "notes.txt"
    keep.write_text("mine")
    again = estimate_llc(model, data, CFG, progress=False, output_dir=out, resume=True)
    assert again.llc_per_chain == first.llc_per_chain
    assert not any((out / name).exists() for name in orphans)
    assert keep.read_text() == "mine"


AUTO = SamplerConfig(
    num_chains=2, num_burnin=20, num_draws=20, batch_size=50, step_size="auto", seed=3
)


@pytest.fixture(scope="module")
def auto_reference(dln):
    model, data = dln
    return estimate_llc(model, data, AUTO, progress=False)


def test_the_calibration_is_kept_for_a_resume(tmp_path, dln, monkeypatch, auto_reference):
    model, data = dln
    out = tmp_path / "run"
    first = estimate_llc(model, data, AUTO, progress=False, output_dir=out)
    assert first.llc_per_chain == auto_reference.llc_per_chain
    saved = json.loads((out / "calibration.json").read_text())
    assert (
        saved["calibration"]["chosen_step_size"]
        == first.diagnostics["calibration"]["chosen_step_size"]
    )

    def rerun(*args, **kwargs):
        raise AssertionError("the calibration ran again on resume")

    monkeypatch.setattr(hf_llc.calibration, "calibrate_problem", rerun)
    again = estimate_llc(model, data, AUTO, progress=False, output_dir=out, resume=True)
    assert again.llc_per_chain == first.llc_per_chain
    assert again.diagnostics["calibration"] == first.diagnostics["calibration"]


def test_ctrl_c_during_the_calibration_saves_and_says_how_to_resume(
    tmp_path, dln, monkeypatch, auto_reference
):
    model, data = dln
    out = tmp_path / "run"
    run_chain = hf_llc.calibration.run_chain
    calls = []

    def interrupt_first_pilot(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return run_chain(*args, **kwargs)

    monkeypatch.setattr(hf_llc.calibration, "run_chain", interrupt_first_pilot)
    with pytest.raises(EstimateInterrupted) as excinfo:
        estimate_llc(model, data, AUTO, progress=False, output_dir=out)
    message = str(excinfo.value)
    assert "SIGINT received during the step-size calibration" in message
    assert f"output_dir={str(out)!r}, resume=True" in message and "--resume" in message
    assert len(calls) == 1  # stopped within the first pilot
    assert (out / "manifest.json").exists() and not (out / LOCK).exists()
    monkeypatch.undo()
    resumed = estimate_llc(model, data, AUTO, progress=False, output_dir=out, resume=True)
    assert resumed.llc_per_chain == auto_reference.llc_per_chain


# --------------------------------------------------------------------------- 6. idle flags


@dataclass
class FlagCase:
    id: str
    argv: Callable[[Path], list[str]]
    message: str


FLAG_CASES = [
    FlagCase(
        "checkpoint-every-without-output-dir",
        lambda saved: _cli(saved, "--checkpoint-every", "5"),
        r"--checkpoint-every does nothing without --output-dir",
    ),
    FlagCase(
        "checkpoint-seconds-without-output-dir",
        lambda saved: _cli(saved, "--checkpoint-seconds", "60"),
        r"--checkpoint-seconds does nothing without --output-dir",
    ),
    FlagCase(
        "split-with-a-local-file",
        lambda saved: (
            [*_cli(saved, "--split", "test")[:4], str(saved / "data.jsonl")]
            + _cli(saved, "--split", "test")[5:]
        ),
        r"--split 'test' does nothing with the local data file --dataset .*data\.jsonl",
    ),
    FlagCase(
        "dataset-config-with-a-local-file",
        lambda saved: (
            [*_cli(saved)[:4], str(saved / "data.jsonl"), "--dataset-config", "en"]
            + _cli(saved)[5:]
        ),
        r"--dataset-config 'en' does nothing with the local data file",
    ),
    FlagCase(
        "dataset-config-with-a-saved-folder",
        lambda saved: _cli(saved, "--dataset-config", "en"),
        r"--dataset-config 'en' does nothing with the save_to_disk folder",
    ),
    FlagCase(
        "card-model-name-without-write-card",
        lambda saved: _cli(saved, "--card-model-name", "a"),
        r"--card-model-name does nothing without --write-card",
    ),
]


@pytest.mark.parametrize("case", FLAG_CASES, ids=[c.id for c in FLAG_CASES])
def test_cli_refuses_flags_that_do_nothing(case, saved, capsys, no_sampling):
    line = _cli_error(case.argv(saved), capsys)
    assert re.search(case.message, line), line


def test_api_refuses_checkpoint_every_without_output_dir(dln):
    model, data = dln
    with pytest.raises(ValueError, match=r"checkpoint_every=5 \(--checkpoint-every\) does"):
        estimate_llc(model, data, CFG, progress=False, checkpoint_every=5)


def test_the_cli_still_records_the_default_split(tmp_path, saved):
    out = tmp_path / "out.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(_cli(saved, "--output", str(out))) == 0
    assert json.loads(out.read_text())["dataset"]["split"] == "train"


# --------------------------------------------------------------------------- 7. self-contained


def test_the_tests_read_nothing_outside_the_repository():
    tests = Path(__file__).resolve().parent
    assert (tests / "data" / "dln_cases.json").is_file()
    assert json.loads((tests / "data" / "dln_cases.json").read_text())["cases"]
    folder = "sha" + "red"  # spelled in pieces so that this test does not match itself
    outside = [f"../{folder}", f'"{folder}"' + " / ", "parents[1]." + "parent"]
    for path in tests.glob("*.py"):
        text = path.read_text()
        assert not [needle for needle in outside if needle in text], path

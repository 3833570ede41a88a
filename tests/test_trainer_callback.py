"""LLCCallback: training undisturbed, logs, files, realizable targets, DDP."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import pytest
import torch
import transformers
from transformers import Trainer, TrainingArguments

import hf_llc
import hf_llc.integrations.trainer as trainer_module
from hf_llc import (
    DLNConfig,
    DLNModel,
    LLCCallback,
    SamplerConfig,
    estimate_llc,
    make_dln_problem,
    model_targets,
    read_llc_from_model_card,
)

# Small chains: these tests check plumbing and exactness, not the estimate's accuracy. The
# default recipe (curvature step size, RMSProp burn-in) in the bit-identity test; a fixed step
# elsewhere, which skips the curvature measurements and keeps the tests fast.
CFG = SamplerConfig(num_chains=2, num_burnin=40, num_draws=40, batch_size=64, seed=5)
FAST = SamplerConfig(
    num_chains=2,
    num_burnin=40,
    num_draws=40,
    batch_size=64,
    seed=5,
    step_size=1e-4,
    preconditioner="identity",
)


def _train(
    output_dir,
    callback_kwargs=None,
    *,
    steps=12,
    save_steps=8,
    dataset=None,
    cfg=CFG,
    resume=None,
    **training_args,
):
    """Train a [4, 3, 4] DLN from a random init (256 rows, 8 steps an epoch); with an
    LLCCallback if kwargs are given; ``resume``: a checkpoint folder to resume from."""
    if dataset is None:
        _, dataset, _ = make_dln_problem([4, 3, 4], 2, "aligned", num_samples=256, seed=0)
    torch.manual_seed(1)
    model = DLNModel(DLNConfig(widths=[4, 3, 4]))
    args = TrainingArguments(
        str(output_dir),
        per_device_train_batch_size=32,
        max_steps=steps,
        learning_rate=0.05,
        logging_steps=4,
        save_steps=save_steps,
        report_to=[],
        seed=3,
        use_cpu=True,
        disable_tqdm=True,
        **training_args,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    callback = None
    if callback_kwargs is not None:
        callback = LLCCallback(trainer, config=cfg, **callback_kwargs)
        trainer.add_callback(callback)
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return model, trainer, callback


def _losses(trainer):
    return [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]


def test_training_is_bit_identical_with_the_callback(tmp_path):
    # AdamW (the default) with a shuffled sampler and dropout-free model: any change to the
    # weights, the global RNG (which seeds the sampler) or the training step would show up
    # in the final weights and the logged losses.
    plain, t_plain, _ = _train(tmp_path / "plain")
    tracked, t_tracked, callback = _train(
        tmp_path / "tracked", {"every_n_steps": 3, "on_save": True}
    )
    for a, b in zip(plain.parameters(), tracked.parameters()):
        assert torch.equal(a, b)
    assert _losses(t_plain) == _losses(t_tracked)
    assert len(_losses(t_plain)) == 3  # steps 4, 8, 12: none swallowed by the LLC logs
    assert (
        t_plain.state.log_history[-1]["train_loss"] == t_tracked.state.log_history[-1]["train_loss"]
    )
    # every 3 steps (3, 6, 9, 12) plus the save at step 8; the end (12) is not repeated
    assert [e["step"] for e in callback.history] == [3, 6, 8, 9, 12]
    assert [e["reason"] for e in callback.history] == ["step", "step", "save", "step", "step"]
    assert tracked.training  # the Trainer's mode is restored


def test_logs_history_files_and_card(tmp_path):
    out = tmp_path / "run"
    _, trainer, callback = _train(out, {"every_n_steps": 6, "on_save": True}, cfg=FAST)
    llc_logs = [e for e in trainer.state.log_history if "llc/mean" in e]
    assert [e["step"] for e in llc_logs] == [6, 8, 12]
    for entry in llc_logs:
        for key in ("llc/mean", "llc/std", "llc/stderr", "llc/init_loss", "llc/nbeta"):
            assert isinstance(entry[key], float)
    assert [e["llc_mean"] for e in callback.history] == [e["llc/mean"] for e in llc_logs]
    assert all(e["verdict"] in ("ok", "warning", "fail") for e in callback.history)

    saved = json.loads((out / "llc_history.json").read_text())
    assert [e["step"] for e in saved["history"]] == [6, 8, 12]
    assert saved["config"]["num_chains"] == 2
    assert (out / "llc_history.png").stat().st_size > 0
    ckpt = json.loads((out / "checkpoint-8" / "llc.json").read_text())
    assert ckpt["llc_mean"] == saved["history"][1]["llc_mean"]

    (card,) = read_llc_from_model_card(out)
    assert card["value"] == pytest.approx(callback.last_result.llc_mean)
    # The Trainer rewrites README.md; the callback puts the LLC back afterwards.
    trainer.create_model_card(model_name="tiny-dln")
    text = (out / "README.md").read_text()
    assert "tiny-dln" in text
    (card,) = read_llc_from_model_card(out)
    assert card["value"] == pytest.approx(callback.last_result.llc_mean)


def test_without_trainer_reference_logs_to_state(tmp_path):
    _, dataset, _ = make_dln_problem([4, 3, 4], 2, "aligned", num_samples=256, seed=0)
    torch.manual_seed(1)
    model = DLNModel(DLNConfig(widths=[4, 3, 4]))
    callback = LLCCallback(None, dataset=dataset, config=FAST, at_steps=[0, 5], on_save=False)
    args = TrainingArguments(
        str(tmp_path), max_steps=6, per_device_train_batch_size=32, report_to=[], use_cpu=True
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    trainer.train()
    steps = [e["step"] for e in trainer.state.log_history if "llc/mean" in e]
    assert steps == [0, 5, 6]  # at_steps, then the end of training


def test_realizable_targets_at_a_non_minimum():
    # A rank-2 [5, 4, 5] DLN whose weights are the teacher's plus a large perturbation: far
    # from the minimum of the data loss, SGLD finds much lower loss nearby, so the data-target
    # estimate is strongly negative (about −nβ·(L_n(w) − min L)). With the model's own outputs
    # as labels, w is an exact minimum (loss 0), so λ̂ ≥ 0 up to noise; 4 chains × 200 draws
    # give a stderr well below the margins checked (λ̂ ≈ 10 against a stderr of about 0.3).
    model, dataset, _ = make_dln_problem([5, 4, 5], 2, "aligned", num_samples=2000, seed=1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    cfg = SamplerConfig(num_chains=4, num_burnin=200, num_draws=200, batch_size=100)
    from_data = estimate_llc(model, dataset, cfg, progress=False)
    relabelled = model_targets(model, dataset)
    from_model = estimate_llc(model, relabelled, cfg, progress=False)
    assert from_data.llc_mean < -10 * from_data.llc_stderr
    assert from_model.init_loss == pytest.approx(0.0, abs=1e-9)
    assert from_model.llc_mean > 0
    assert from_model.llc_mean > from_model.llc_stderr


def test_model_targets_replaces_only_labels():
    model, dataset, _ = make_dln_problem([3, 2, 3], 1, "aligned", num_samples=50, seed=0)
    out = model_targets(model, dataset, batch_size=16)
    inputs = torch.tensor(dataset["inputs"])
    assert torch.equal(out["inputs"], inputs)
    torch.testing.assert_close(out["labels"], model(inputs).logits.detach())


def test_model_targets_refuses_classifiers_and_missing_labels():
    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 4)

        def forward(self, inputs):
            return self.lin(inputs)

    data = {"inputs": torch.randn(8, 3), "labels": torch.zeros(8, dtype=torch.long)}
    with pytest.raises(ValueError, match="regression models"):
        model_targets(Classifier(), data)
    with pytest.raises(ValueError, match="label_column"):
        model_targets(Classifier(), {"inputs": torch.randn(8, 3)})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"every_n_epochs": 1.5}, "every_n_epochs"),
        ({"every_n_epochs": True}, "every_n_epochs"),
        ({"at_steps": [-1]}, "at_steps"),
        ({"targets": "labels"}, "targets"),
        ({"num_samples": 1}, "num_samples"),
        ({"estimate_kwargs": {"num_samples": 10}}, "estimate_kwargs"),
        ({"config": [2]}, "config"),
        ({"config": {"num_chains": 0}}, "num_chains"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LLCCallback(None, **kwargs)


def test_no_data_fails_at_train_begin(tmp_path):
    model = DLNModel(DLNConfig(widths=[2, 2]))
    args = TrainingArguments(str(tmp_path), max_steps=1, report_to=[], use_cpu=True)
    callback = LLCCallback(None, config=FAST)
    with pytest.raises(ValueError, match="dataset="):
        callback.on_train_begin(args, type("S", (), {"global_step": 0})(), None, model=model)


def test_defaults_estimate_once_at_the_end_not_at_saves(tmp_path):
    out = tmp_path / "run"
    _, trainer, callback = _train(out, {}, cfg=FAST, save_steps=4)
    assert (out / "checkpoint-4").is_dir() and (out / "checkpoint-8").is_dir()
    assert [(e["step"], e["reason"]) for e in callback.history] == [(12, "end")]
    assert not list(out.glob("checkpoint-*/llc.json"))
    assert [e["step"] for e in trainer.state.log_history if "llc/mean" in e] == [12]


def test_every_n_epochs(tmp_path):
    # 8 steps an epoch, 3 epochs: the end of epoch 2 (step 16), then the end of training.
    _, _, callback = _train(tmp_path, {"every_n_epochs": 2}, cfg=FAST, steps=24, save_steps=100)
    assert [(e["step"], e["reason"]) for e in callback.history] == [(16, "epoch"), (24, "end")]
    assert callback.history[0]["epoch"] == pytest.approx(2.0)
    # Every epoch; the end of training falls on the last epoch's estimate, which is not repeated.
    _, _, every = _train(tmp_path / "each", {"every_n_epochs": 1}, cfg=FAST, steps=16)
    assert [(e["step"], e["reason"]) for e in every.history] == [(8, "epoch"), (16, "epoch")]


def _stateful_history(checkpoint):
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    saved = state["stateful_callbacks"]["LLCCallback"]
    assert saved["args"]["every_n_steps"] == 4 and saved["args"]["config"]["seed"] == 5
    return saved["attributes"]["history"]


@pytest.mark.parametrize("rebuilt_by_trainer", [False, True])
def test_resumed_training_keeps_the_history(tmp_path, rebuilt_by_trainer):
    # Estimates every 4 steps and at each save (every 6): 4, 6 (save), 8, 12. The checkpoint
    # at step 6 holds the history up to it, the save's own estimate included.
    first = tmp_path / "first"
    kwargs = {"every_n_steps": 4, "on_save": True}
    _, _, callback = _train(first, kwargs, cfg=FAST, save_steps=6)
    full = callback.history
    assert [(e["step"], e["reason"]) for e in full] == [
        (4, "step"),
        (6, "save"),
        (8, "step"),
        (12, "step"),
    ]
    assert _stateful_history(first / "checkpoint-6") == full[:2]
    assert _stateful_history(first / "checkpoint-12") == full

    # Resume in a fresh folder holding only the checkpoint (no llc_history.json): the history
    # comes from the checkpoint's trainer_state.json.
    second = tmp_path / "second"
    shutil.copytree(first / "checkpoint-6", second / "checkpoint-6")
    options = {"restore_callback_states_from_checkpoint": True} if rebuilt_by_trainer else {}
    _, trainer, callback = _train(
        second, kwargs, cfg=FAST, save_steps=6, resume=second / "checkpoint-6", **options
    )
    if rebuilt_by_trainer:  # the Trainer replaced it by one made from state()
        (callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, LLCCallback)]
        assert callback.trainer is None
    resumed = callback.history
    assert [(e["step"], e["reason"]) for e in resumed] == [(e["step"], e["reason"]) for e in full]
    assert resumed[:2] == full[:2]  # the earlier estimates, unchanged
    saved = json.loads((second / "llc_history.json").read_text())["history"]
    assert [e["step"] for e in saved] == [4, 6, 8, 12]


def test_state_round_trips_through_the_constructor():
    callback = LLCCallback(
        None, config=FAST, every_n_epochs=3, at_steps=[5, 1], on_save=True, plot=False
    )
    callback.history = [{"step": 1, "llc_mean": 2.5}]
    state = json.loads(json.dumps(callback.state()))  # as trainer_state.json keeps it
    rebuilt = LLCCallback(**state["args"])
    assert rebuilt.config == FAST
    assert (rebuilt.every_n_epochs, rebuilt.at_steps) == (3, {1, 5})
    assert (rebuilt.on_save_flag, rebuilt.plot) == (True, False)
    rebuilt.history = state["attributes"]["history"]
    assert rebuilt.state() == callback.state()


@pytest.fixture
def keep_log_levels():
    """hf_llc's level, and transformers' (which the Trainer sets from log_level), put back."""
    library = logging.getLogger("hf_llc")
    before, transformers_before = library.level, transformers.logging.get_verbosity()
    yield
    library.setLevel(before)
    transformers.logging.set_verbosity(transformers_before)


@pytest.mark.parametrize(
    "log_level, expected", [("debug", logging.DEBUG), ("error", logging.ERROR), ("passive", None)]
)
def test_estimates_run_at_the_trainers_log_level(
    tmp_path, monkeypatch, log_level, expected, keep_log_levels
):
    seen = []
    real = trainer_module.estimate_llc

    def estimate(*args, **kwargs):
        seen.append(hf_llc.get_verbosity())
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "estimate_llc", estimate)
    hf_llc.set_verbosity("warning")
    _train(tmp_path, {"at_steps": [2]}, cfg=FAST, steps=4, log_level=log_level)
    after = hf_llc.get_verbosity()
    # "passive" leaves hf_llc's own level; either way it is put back after each estimate.
    assert seen == [expected or logging.WARNING] * 2  # step 2 and the end
    assert after == logging.WARNING


def test_error_log_level_silences_a_diverging_estimate(tmp_path, caplog, keep_log_levels):
    diverging = SamplerConfig(
        num_chains=2,
        num_burnin=5,
        num_draws=10,
        batch_size=64,
        step_size=1.0,
        preconditioner="identity",
        divergence_retries=0,
    )
    with caplog.at_level(logging.DEBUG):
        _, _, quiet = _train(tmp_path / "quiet", {}, cfg=diverging, steps=2, log_level="error")
    assert quiet.history[0]["divergent_chains"] == 2
    assert quiet.history[0]["llc_mean"] is None  # NaN, kept as null in the JSON history
    assert not [r for r in caplog.records if r.name.startswith("hf_llc")]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_llc"):
        _train(tmp_path / "loud", {}, cfg=diverging, steps=2)  # log_level passive
    messages = [r.getMessage() for r in caplog.records]
    assert any("every chain diverged" in m for m in messages)
    # Training ends normally; the NaN estimate is kept out of the model card, with a notice.
    assert any("not written into the model card" in m for m in messages)
    assert not read_llc_from_model_card(tmp_path / "loud")


DDP_SCRIPT = """
import json, sys, torch
from accelerate import PartialState, debug_launcher
from transformers import Trainer, TrainingArguments
from hf_llc import DLNConfig, DLNModel, LLCCallback, SamplerConfig, make_dln_problem

def run(out_dir):
    _, dataset, _ = make_dln_problem([4, 3, 4], 2, "aligned", num_samples=256, seed=0)
    torch.manual_seed(1)
    model = DLNModel(DLNConfig(widths=[4, 3, 4]))
    args = TrainingArguments(out_dir, per_device_train_batch_size=16, max_steps=6,
                             logging_steps=2, save_strategy="no", report_to=[], seed=3)
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    cfg = SamplerConfig(num_chains=3, num_burnin=30, num_draws=30, batch_size=64, seed=5,
                        step_size=1e-4, preconditioner="identity")
    callback = LLCCallback(trainer, config=cfg, every_n_steps=3)
    trainer.add_callback(callback)
    trainer.train()
    state = PartialState()
    assert state.num_processes == 2
    losses = [e for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 3, losses
    with open(f"{out_dir}/rank{state.process_index}.json", "w") as f:
        json.dump(callback.history, f)

if __name__ == "__main__":
    debug_launcher(run, args=(sys.argv[1],), num_processes=2)
"""


def test_ddp_two_processes(tmp_path):
    # A fresh interpreter for the same reason as in test_distributed: forking this pytest
    # process after OpenMP has run can deadlock.
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert [e["step"] for e in rank0] == [3, 6]
    # Both processes hold the same gathered estimate; chains 0, 2 ran on rank 0 and 1 on rank 1.
    assert rank0 == rank1
    assert all(len(e["llc_per_chain"]) == 3 for e in rank0)
    saved = json.loads((tmp_path / "llc_history.json").read_text())
    assert [e["step"] for e in saved["history"]] == [3, 6]

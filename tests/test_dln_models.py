"""Tests of the deep linear network architecture, its Auto registration and teacher problems."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel

import hf_llc.models.dln as dln_pkg
from hf_llc.models.dln import (
    DLNConfig,
    DLNModel,
    DLNProblem,
    DLNTruth,
    dln_learning_coefficient,
    dln_truth,
    make_dln_problem,
)
from hf_llc.models.dln.modeling_dln import DLNOutput


def _set_weights(model, weights):
    with torch.no_grad():
        for layer, w in zip(model.layers, weights):
            layer.weight.copy_(torch.as_tensor(w, dtype=layer.weight.dtype))


def _columns(dataset):
    data = dataset.with_format("torch")[:]
    return data["inputs"], data["labels"]


# --- configuration -------------------------------------------------------------------------


def test_config_defaults_and_normalisation():
    config = DLNConfig()
    assert config.model_type == "hf_llc_dln"
    assert config.widths == [4, 4, 4]
    assert config.loss_type == "gaussian_nll"
    assert config.num_layers == 2
    config = DLNConfig(widths=(3, np.int64(2), 5), loss_type="mse")
    assert config.widths == [3, 2, 5]
    assert all(type(h) is int for h in config.widths)
    # Defaults are not shared between instances.
    a, b = DLNConfig(), DLNConfig()
    a.widths.append(7)
    assert b.widths == [4, 4, 4]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"widths": [4]}, "widths"),
        ({"widths": []}, "widths"),
        ({"widths": 4}, "widths"),
        ({"widths": "44"}, "widths"),
        ({"widths": [4, 0, 4]}, r"widths\[1\]"),
        ({"widths": [4, -2]}, r"widths\[1\]"),
        ({"widths": [4, 2.5]}, r"widths\[1\]"),
        ({"widths": [True, 3]}, r"widths\[0\]"),
        ({"loss_type": "l1"}, "loss_type"),
        ({"loss_type": "MSE"}, "loss_type"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DLNConfig(**kwargs)


def test_config_revalidated_on_save(tmp_path):
    config = DLNConfig(widths=[3, 3])
    config.loss_type = "bogus"
    with pytest.raises(ValueError, match="loss_type"):
        config.save_pretrained(tmp_path)


# --- model ---------------------------------------------------------------------------------


def test_parameters_and_init():
    torch.manual_seed(0)
    model = DLNModel(DLNConfig(widths=[400, 300, 5]))
    names = [name for name, _ in model.named_parameters()]
    assert names == ["layers.0.weight", "layers.1.weight"]
    assert model.layers[0].weight.shape == (300, 400)
    assert model.layers[1].weight.shape == (5, 300)
    assert all(layer.bias is None for layer in model.layers)
    assert model.num_parameters() == 400 * 300 + 300 * 5
    # _init_weights: N(0, 1/fan_in).
    std = model.layers[0].weight.std().item()
    assert abs(std - 1 / math.sqrt(400)) < 0.02 / math.sqrt(400) * 10


def _hand_example(loss_type):
    # widths [2, 1, 3]: W1 = [[1, 2]], W2 = [[1], [-1], [2]]
    # x = (1, 1) -> h = 3 -> f = (3, -3, 6); y = 0 -> squared errors 9 + 9 + 36 = 54
    # x = (2, 0) -> h = 2 -> f = (2, -2, 4); y = (1, -1, 1) -> 1 + 1 + 9 = 11
    model = DLNModel(DLNConfig(widths=[2, 1, 3], loss_type=loss_type))
    _set_weights(model, [[[1.0, 2.0]], [[1.0], [-1.0], [2.0]]])
    x = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    y = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 1.0]])
    logits = torch.tensor([[3.0, -3.0, 6.0], [2.0, -2.0, 4.0]])
    return model, x, y, logits


@pytest.mark.parametrize(
    "loss_type, per_sample",
    [("gaussian_nll", [27.0, 5.5]), ("mse", [18.0, 11.0 / 3.0])],
)
def test_forward_matches_hand_computation(loss_type, per_sample):
    model, x, y, expected_logits = _hand_example(loss_type)
    out = model(x, labels=y)
    assert isinstance(out, DLNOutput)
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.logits, expected_logits)
    assert out.loss.shape == ()
    torch.testing.assert_close(out.loss, torch.tensor(sum(per_sample) / 2))
    ps = model.per_sample_loss(out.logits, y)
    assert ps.shape == (2,)
    torch.testing.assert_close(ps, torch.tensor(per_sample))
    torch.testing.assert_close(ps.mean(), out.loss)


@pytest.mark.parametrize("loss_type", ["gaussian_nll", "mse"])
def test_per_sample_loss_mean_is_loss_random(loss_type):
    torch.manual_seed(1)
    model = DLNModel(DLNConfig(widths=[6, 4, 5], loss_type=loss_type))
    x, y = torch.randn(32, 6), torch.randn(32, 5)
    out = model(x, labels=y)
    torch.testing.assert_close(model.per_sample_loss(out.logits, y).mean(), out.loss)
    # gaussian_nll = (H_L / 2) * mse
    other = "mse" if loss_type == "gaussian_nll" else "gaussian_nll"
    twin = DLNModel(DLNConfig(widths=[6, 4, 5], loss_type=other))
    twin.load_state_dict(model.state_dict())
    ratio = out.loss / twin(x, labels=y).loss
    expected = 5 / 2 if loss_type == "gaussian_nll" else 2 / 5
    assert ratio.item() == pytest.approx(expected, rel=1e-5)


def test_forward_without_labels_and_tuple_output():
    model, x, y, expected_logits = _hand_example("gaussian_nll")
    out = model(x)
    assert out.loss is None
    torch.testing.assert_close(out.logits, expected_logits)
    (logits,) = model(x, return_dict=False)
    torch.testing.assert_close(logits, expected_logits)
    loss, logits = model(x, labels=y, return_dict=False)
    assert loss.item() == pytest.approx(16.25)
    # extra keyword arguments (e.g. from a Trainer) are ignored
    assert model(inputs=x, labels=y, num_items_in_batch=2).loss.item() == pytest.approx(16.25)


def test_shape_errors():
    model, x, y, _ = _hand_example("gaussian_nll")
    with pytest.raises(ValueError, match="inputs"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="labels"):
        model(x, labels=torch.zeros(2, 2))


def test_end_to_end_matrix():
    torch.manual_seed(2)
    model = DLNModel(DLNConfig(widths=[5, 3, 4, 2]))
    w1, w2, w3 = (layer.weight for layer in model.layers)
    product = model.end_to_end_matrix()
    assert product.shape == (2, 5)
    torch.testing.assert_close(product, w3 @ w2 @ w1)
    x = torch.randn(7, 5)
    torch.testing.assert_close(model(x).logits, x @ product.T)
    single = DLNModel(DLNConfig(widths=[3, 2]))
    torch.testing.assert_close(single.end_to_end_matrix(), single.layers[0].weight)


def test_functional_call_and_grad():
    torch.manual_seed(3)
    model = DLNModel(DLNConfig(widths=[4, 3, 2]))
    x, y = torch.randn(10, 4), torch.randn(10, 2)
    params = {name: torch.randn_like(p) for name, p in model.named_parameters()}

    def loss_fn(p):
        return torch.func.functional_call(model, p, (x,), {"labels": y}).loss

    expected_logits = x @ params["layers.0.weight"].T @ params["layers.1.weight"].T
    expected = 0.5 * (expected_logits - y).square().sum(-1).mean()
    torch.testing.assert_close(loss_fn(params), expected)
    grads = torch.func.grad(loss_fn)(params)
    assert set(grads) == set(params)
    for name, p in params.items():
        p = p.clone().requires_grad_(True)
        other = {k: (p if k == name else v) for k, v in params.items()}
        (g,) = torch.autograd.grad(loss_fn(other), p)
        torch.testing.assert_close(grads[name], g)
    # module parameters were not touched
    assert not any(torch.equal(params[n], p) for n, p in model.named_parameters())


def test_save_and_auto_load(tmp_path):
    torch.manual_seed(4)
    model = DLNModel(DLNConfig(widths=[3, 5, 2], loss_type="mse"))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert (tmp_path / "config.json").is_file()

    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, DLNConfig)
    assert config.widths == [3, 5, 2]
    assert config.loss_type == "mse"

    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is DLNModel
    assert loaded.config.widths == [3, 5, 2]
    assert loaded.config.loss_type == "mse"
    assert loaded.dtype == torch.float32
    original = model.state_dict()
    restored = loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key])

    direct = DLNModel.from_pretrained(tmp_path)
    assert torch.equal(direct.end_to_end_matrix(), model.end_to_end_matrix())


def test_registration_is_idempotent():
    dln_pkg._register_auto_classes()
    dln_pkg._register_auto_classes()
    reloaded = importlib.reload(dln_pkg)
    importlib.reload(reloaded)
    config = AutoConfig.for_model("hf_llc_dln", widths=[2, 3])
    assert isinstance(config, DLNConfig)
    assert type(AutoModel.from_config(config)) is DLNModel


# --- teacher problems ----------------------------------------------------------------------


def test_problem_unpacks_into_three_fields():
    assert DLNProblem._fields == ("model", "dataset", "learning_coefficient")
    problem = make_dln_problem([3, 2, 3], num_samples=10)
    model, dataset, lam = problem
    assert isinstance(model, DLNModel)
    assert isinstance(lam, Fraction)
    assert problem.learning_coefficient == lam


@pytest.mark.parametrize("widths", [[5, 3, 4], [4, 6, 2, 5], [3, 3]])
def test_origin(widths):
    model, dataset, lam = make_dln_problem(widths, construction="origin", num_samples=20)
    assert all(torch.count_nonzero(layer.weight) == 0 for layer in model.layers)
    assert torch.linalg.matrix_rank(model.end_to_end_matrix()).item() == 0
    assert lam == dln_learning_coefficient(widths, 0)[0]
    assert make_dln_problem(widths, rank=0, construction="origin", num_samples=5)[2] == lam
    _, labels = _columns(dataset)
    assert torch.count_nonzero(labels) == 0


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_aligned(rank):
    widths = [5, 3, 4, 6]
    model, dataset, lam = make_dln_problem(
        widths, rank=rank, construction="aligned", num_samples=20
    )
    for layer, (h_in, h_out) in zip(model.layers, zip(widths[:-1], widths[1:])):
        expected = torch.zeros(h_out, h_in)
        expected[:rank, :rank] = torch.eye(rank)
        assert torch.equal(layer.weight, expected)
    product = model.end_to_end_matrix()
    assert torch.linalg.matrix_rank(product).item() == rank
    assert lam == dln_learning_coefficient(widths, rank)[0]
    truth = dln_truth(widths, rank, "aligned")
    assert truth == DLNTruth(lam, dln_learning_coefficient(widths, rank)[1], rank, "aligned")


@pytest.mark.parametrize("widths", [[5, 3, 4], [4, 6, 2, 5], [3, 7], [6, 6, 6]])
def test_full_rank(widths):
    r = min(widths)
    model, dataset, lam = make_dln_problem(widths, num_samples=20, seed=5)
    for layer in model.layers:
        w = layer.weight.double()
        s = torch.linalg.svdvals(w)
        assert s.numel() == min(w.shape)
        assert s.min() >= 0.5 - 1e-5 and s.max() <= 1.5 + 1e-5
    assert torch.linalg.matrix_rank(model.end_to_end_matrix()).item() == r
    lam_explicit = make_dln_problem(widths, rank=r, num_samples=20, seed=5)[2]
    assert lam == lam_explicit == dln_learning_coefficient(widths, r)[0]
    # at rank min(widths) the DLN is regular in function space: λ = r(H_0 + H_L − r)/2
    assert lam == Fraction(r * (widths[0] + widths[-1] - r), 2)
    assert dln_truth(widths).rank == r


def test_model_state_and_dataset_contents():
    widths = [4, 3, 5]
    model, dataset, _ = make_dln_problem(widths, num_samples=257, seed=3)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert dataset.num_rows == 257
    assert dataset.column_names == ["inputs", "labels"]
    assert dataset.features["inputs"].feature.dtype == "float32"
    assert dataset.features["labels"].feature.dtype == "float32"
    inputs, labels = _columns(dataset)
    assert inputs.shape == (257, 4) and labels.shape == (257, 5)
    assert inputs.dtype == labels.dtype == torch.float32
    with torch.no_grad():
        out = model(inputs, labels=labels)
    torch.testing.assert_close(out.logits, labels, rtol=1e-5, atol=1e-5)
    assert out.loss.item() < 1e-10
    description = dataset.info.description
    assert '"construction": "full_rank"' in description and '"multiplicity": 1' in description


def test_input_distributions_and_noise():
    n = 20_000
    _, normal, _ = make_dln_problem([3, 3], num_samples=n, seed=1)
    _, uniform, _ = make_dln_problem([3, 3], num_samples=n, seed=1, input_distribution="uniform")
    x_normal, _ = _columns(normal)
    x_uniform, _ = _columns(uniform)
    assert x_uniform.abs().max() <= math.sqrt(3) + 1e-6
    assert x_normal.abs().max() > math.sqrt(3)
    for x in (x_normal, x_uniform):
        assert x.mean().abs() < 0.03
        assert abs(x.var().item() - 1.0) < 0.05

    model, noisy, _ = make_dln_problem([3, 3], num_samples=n, seed=1, noise_std=0.5)
    x_noisy, y_noisy = _columns(noisy)
    assert torch.equal(x_noisy, x_normal)  # the noise has its own stream
    with torch.no_grad():
        residual = y_noisy - model(x_noisy).logits
    assert abs(residual.std().item() - 0.5) < 0.02


def test_seeds_are_reproducible_and_distinct():
    def snapshot(seed, construction="full_rank"):
        model, dataset, _ = make_dln_problem(
            [4, 3, 4], construction=construction, num_samples=50, seed=seed
        )
        return [layer.weight.clone() for layer in model.layers], dataset

    w_a, d_a = snapshot(7)
    w_b, d_b = snapshot(7)
    w_c, d_c = snapshot(8)
    assert all(torch.equal(a, b) for a, b in zip(w_a, w_b))
    assert d_a.data.equals(d_b.data)
    assert d_a._fingerprint == d_b._fingerprint
    assert not any(torch.equal(a, c) for a, c in zip(w_a, w_c))
    assert not d_a.data.equals(d_c.data)
    assert d_a._fingerprint != d_c._fingerprint
    _, d_origin_7 = snapshot(7, "origin")
    _, d_origin_8 = snapshot(8, "origin")
    assert not torch.equal(_columns(d_origin_7)[0], _columns(d_origin_8)[0])


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_dln_problem([3, 4, 3], num_samples=10)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"construction": "origin", "rank": 2}, "rank"),
        ({"construction": "aligned"}, "rank"),
        ({"construction": "aligned", "rank": 4}, "rank"),
        ({"construction": "aligned", "rank": -1}, "rank"),
        ({"construction": "full_rank", "rank": 2}, "known"),
        ({"construction": "random"}, "construction"),
        ({"construction": "aligned", "rank": 1.0}, "rank"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 2.5}, "num_samples"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"input_distribution": "cauchy"}, "input_distribution"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"noise_std": float("nan")}, "noise_std"),
        ({"loss_type": "l1"}, "loss_type"),
        ({"widths": [5]}, "widths"),
        ({"widths": [5, 0, 3]}, "widths"),
    ],
)
def test_bad_arguments(kwargs, match):
    kwargs = {"widths": [5, 3, 4], "num_samples": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_dln_problem(**kwargs)


def test_unknown_point_message_explains():
    with pytest.raises(ValueError) as info:
        dln_truth([5, 3, 4], 1, "full_rank")
    message = str(info.value)
    for word in ("origin", "aligned", "full_rank", "exceed"):
        assert word in message

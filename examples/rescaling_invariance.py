"""λ̂ against a rescaling that leaves the function unchanged (Furman & Lau, arXiv 2402.03698).

A ReLU network x ↦ W₂·relu(W₁x + b₁) + b₂ (10-20-10, biases, duplicated hidden units: a
singular teacher) computes the same function after W₁, b₁ → α·W₁, α·b₁ and W₂ → W₂/α, for any
α > 0, so its learning coefficient does not depend on α. This script estimates λ̂ at the
rescaled teacher for α = 10⁻²…10² with six recipes side by side:

- the default (``SamplerConfig()``: the ``"fisher-burnin"`` preconditioner from its
  equivariant first A, ``fisher_start="curvature"``, which is invariant without being told
  the symmetry);
- the default with the Euclidean localizer (``localizer="euclidean"``: the same invariant chain
  mechanics, but a target that is not invariant);
- plain SGLD (``preconditioner="identity"``), and the earlier default ``"rmsprop-burnin"``;
- the hand-built diagonal that knows the symmetry (α² on layer 1, α⁻² on layer 2, γ = 0);
- the earlier default, ``"fisher-burnin"`` from the flat first A (``fisher_start="flat"``:
  A ≡ 1/nβ, which leaves a slight trend over α).

It writes ``rescaling_invariance.json`` and ``rescaling_invariance.png`` to ``--out``
(``docs/`` holds the committed run). ``--quick`` is a smoke run (few steps, two α).

    python examples/rescaling_invariance.py --out docs
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from hf_llc import SamplerConfig, estimate_llc

ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0)


class ReLUNet(nn.Module):
    """x ↦ W₂·relu(W₁x + b₁) + b₂."""

    def __init__(self, d_in: int = 10, hidden: int = 20, d_out: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(inputs)))


def make_teacher(seed: int = 0, d_in: int = 10, hidden: int = 20, d_out: int = 10) -> ReLUNet:
    """A teacher whose hidden units come in identical pairs (each unit's outgoing weight split
    between the two copies): a singular point, as trained networks with redundant units are."""
    gen = torch.Generator().manual_seed(seed)
    net = ReLUNet(d_in, hidden, d_out)
    half = hidden // 2
    with torch.no_grad():
        w1 = torch.randn(half, d_in, generator=gen) / math.sqrt(d_in)
        b1 = 0.1 * torch.randn(half, generator=gen)
        w2 = torch.randn(d_out, half, generator=gen) / math.sqrt(half)
        net.fc1.weight.copy_(torch.cat([w1, w1]))
        net.fc1.bias.copy_(torch.cat([b1, b1]))
        net.fc2.weight.copy_(torch.cat([0.5 * w2, 0.5 * w2], dim=1))
        net.fc2.bias.copy_(0.1 * torch.randn(d_out, generator=gen))
    return net


def make_data(teacher: ReLUNet, n: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """n inputs x ~ N(0, I) labelled by the teacher (realizable: L_n(w*) = 0)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, teacher.fc1.in_features, generator=gen)
    with torch.no_grad():
        y = teacher(x)
    return {"inputs": x, "labels": y}


def gaussian_nll(outputs: torch.Tensor, batch) -> torch.Tensor:
    """Per-sample ½‖y − f(x)‖² (summed over outputs), the loss the theory assumes."""
    return 0.5 * (outputs - batch["labels"]).pow(2).sum(dim=-1)


def rescaled(teacher: ReLUNet, alpha: float) -> ReLUNet:
    """The same function with layer 1 (weights and bias) × α and layer 2's weights ÷ α."""
    net = ReLUNet(teacher.fc1.in_features, teacher.fc1.out_features, teacher.fc2.out_features)
    net.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        net.fc1.weight.mul_(alpha)
        net.fc1.bias.mul_(alpha)
        net.fc2.weight.div_(alpha)
    return net


def hand_diagonal(net: ReLUNet, alpha: float) -> dict[str, torch.Tensor]:
    """The diagonal that makes SGLD invariant to this one symmetry: α² on layer 1, α⁻² on
    layer 2's weights, 1 on its bias."""
    scale = {"fc1.weight": alpha**2, "fc1.bias": alpha**2, "fc2.weight": alpha**-2}
    return {name: torch.full_like(p, scale.get(name, 1.0)) for name, p in net.named_parameters()}


RECIPES = {
    "default (fisher-burnin, curvature start)": {},
    "fisher-burnin, Euclidean localizer": {"localizer": "euclidean"},
    "rmsprop-burnin (an earlier default)": {"preconditioner": "rmsprop-burnin"},
    "plain SGLD (identity)": {"preconditioner": "identity"},
    "hand diagonal, γ = 0": {"preconditioner": "hand", "localization": 0.0},
    "fisher-burnin, flat start (an earlier default)": {"fisher_start": "flat"},
}


def run(alphas, n: int, base: SamplerConfig, recipes=RECIPES) -> dict:
    teacher = make_teacher()
    data = make_data(teacher, n)
    rows = []
    for alpha in alphas:
        net = rescaled(teacher, alpha)
        for label, changes in recipes.items():
            changes = dict(changes)
            if changes.get("preconditioner") == "hand":
                changes["preconditioner"] = hand_diagonal(net, alpha)
            cfg = SamplerConfig(**{**base.to_dict(), **changes})
            start = time.perf_counter()
            result = estimate_llc(net, data, cfg, loss_fn=gaussian_nll, progress=False)
            rows.append(
                {
                    "alpha": alpha,
                    "recipe": label,
                    "llc_mean": result.llc_mean,
                    "llc_stderr": result.llc_stderr,
                    "verdict": result.verdict,
                    "seconds": time.perf_counter() - start,
                }
            )
            print(
                f"α = {alpha:<6g} {label:46s} λ̂ = {result.llc_mean:8.2f} ± "
                f"{result.llc_stderr:.2f}  {result.verdict}",
                flush=True,
            )
    return {"num_samples": n, "config": base.to_dict(), "alphas": list(alphas), "rows": rows}


def spread(data: dict, recipe: str) -> float:
    """Largest |λ̂(α) − mean| / mean over α for one recipe."""
    values = [r["llc_mean"] for r in data["rows"] if r["recipe"] == recipe]
    mean = sum(values) / len(values)
    return max(abs(v - mean) for v in values) / abs(mean)


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for recipe in RECIPES:
        rows = [r for r in data["rows"] if r["recipe"] == recipe]
        ax.errorbar(
            [r["alpha"] for r in rows],
            [r["llc_mean"] for r in rows],
            yerr=[2 * r["llc_stderr"] for r in rows],
            marker="o",
            capsize=3,
            label=recipe,
        )
    ax.set_xscale("log")
    ax.set_xlabel("α (layer 1 × α, layer 2 ÷ α: the same function)")
    ax.set_ylabel("λ̂ (± 2 standard errors)")
    ax.set_title("ReLU 10-20-10 with duplicated units: λ̂ against rescaling")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for the JSON and PNG (default: .)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps, two α")
    parser.add_argument("--num-samples", type=int, default=10_000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        alphas, base = (0.1, 10.0), SamplerConfig(num_chains=2, num_burnin=90, num_draws=60)
        n = 2_000
    else:
        alphas, base, n = ALPHAS, SamplerConfig(), args.num_samples
    data = run(alphas, n, base)
    data["spread"] = {recipe: spread(data, recipe) for recipe in RECIPES}
    for recipe, value in data["spread"].items():
        print(f"{recipe:34s} max |λ̂(α) − mean| / mean = {value:.1%}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rescaling_invariance.json").write_text(json.dumps(data, indent=1))
    plot(data, out / "rescaling_invariance.png")
    print(f"wrote {out / 'rescaling_invariance.json'} and {out / 'rescaling_invariance.png'}")
    return data


if __name__ == "__main__":
    main()

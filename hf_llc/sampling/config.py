"""The sampler's configuration: one dataclass, no Hugging Face imports.

Symbols follow Lau et al. (arXiv 2308.12108) and Furman & Lau (arXiv 2402.03698):
ε = ``step_size``, γ = ``localization``, nβ = ``nbeta``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

PRECONDITIONERS = ("fisher-burnin", "identity", "rmsprop", "rmsprop-burnin")
CHAIN_MODES = ("auto", "batched", "sequential")
STEP_SIZE_MODES = ("curvature", "auto")
LOCALIZERS = ("preconditioner", "euclidean")
INTEGRATORS = ("euler", "leimkuhler-matthews")
FISHER_STARTS = ("flat", "curvature")
# The largest finite float32: the sampling state is fp32, so larger settings become inf there.
FLOAT32_MAX = 3.4028234663852886e38
#: Settings that add a report to the result without changing the estimate's chains: left out
#: of a run's identity (a checkpointed run's manifest, a model-card entry's ``settings_id``),
#: so turning them on or off neither blocks a resume nor makes a second card entry.
REPORT_SETTINGS = ("robustness", "record_metric")
#: Settings added after runs and cards already recorded their settings, with the value every
#: earlier run had: left out of a run's identity at that value, so that a run checkpointed or
#: a card entry written before the setting existed keeps its identity.
LATER_SETTINGS = {
    "localizer": "preconditioner",
    "integrator": "euler",
    "probe_reach": 1.0,
    "fisher_start": "flat",
}


def chain_settings(settings: Mapping[str, Any]) -> dict:
    """``settings`` (a :meth:`SamplerConfig.to_dict`) without :data:`REPORT_SETTINGS` and
    without :data:`LATER_SETTINGS` at their original value."""
    return {
        k: v
        for k, v in settings.items()
        if k not in REPORT_SETTINGS and not (k in LATER_SETTINGS and v == LATER_SETTINGS[k])
    }


def parse_step_size(text: str) -> float | str:
    """A step size written as text: a number, ``"curvature"`` or ``"auto"``."""
    if text in STEP_SIZE_MODES:
        return text
    try:
        return float(text)
    except ValueError as err:
        raise ValueError(
            f"step_size takes a positive number, 'curvature' or 'auto', got {text!r}"
        ) from err


def _setting(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field with its command-line help (and ``choices``/``parse``) in
    ``metadata``, which :mod:`hf_llc.cli` turns into a flag (``metadata["help"]`` as in
    ``transformers.HfArgumentParser``)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class SamplerConfig:
    """Settings of the SGLD sampler behind :func:`hf_llc.estimate_llc`.

    Args:
        step_size: ε, the SGLD step size; or ``"curvature"`` (default): each chain sets
            ε = ``step_scale`` / λ_max(A·∇²U) where U(w) = nβ·L(w) + (γ/2)‖w − w*‖² is the
            potential and λ_max its largest (preconditioned) Hessian eigenvalue, estimated by
            power iteration with Hessian-vector products, first at w* (with a probe at the scale
            of one step, so that a flat w* such as the origin of a deep linear network does not
            yield a huge step), then re-estimated during burn-in at the chain's current point,
            where ε may only shrink (it must be stable wherever the chain goes). With
            ``"fisher-burnin"``, ε is measured afresh each time A is re-estimated (A's scale
            changes), and after A is frozen (half-way through the burn-in) it may only shrink.
            ε is fixed during the draws, so the draws are an ordinary constant-step SGLD chain.
            ``"auto"``: before the real chains, short pilot chains over a grid of fixed ε
            around the curvature step choose the largest ε that is stable, flat and has MALA
            acceptance ≥ 0.9; the chains then use that fixed ε (see
            :mod:`hf_llc.calibration`; the sweep is in ``diagnostics["calibration"]``).
        step_scale: c in ε = c / λ_max, the step measured in units of the stiffest direction's
            curvature. The Euler discretisation inflates the variance of a direction of curvature
            h by 1 / (1 − εh/4) (exactly, for a Gaussian; not at all with ``integrator=
            "leimkuhler-matthews"``); c = 0.3 (default) trades a bounded
            inflation in the stiffest directions for three times faster mixing than c = 0.1,
            which on deep linear networks gave the smaller total error.
        localization: γ, strength of the Gaussian localization (γ/2)‖w − w*‖². Keep it weak
            relative to nβ times the curvature: strong localization biases λ̂ low. With the
            ``"fisher-burnin"`` preconditioner the localizer is measured in its metric,
            (γ/2)·(w − w*)ᵀ·M·(w − w*) with M = A⁻¹/nβ ≈ the curvature diagonal of L (see
            :class:`~hf_llc.sampling.preconditioners.FisherPreconditioner`), so that it is
            invariant to rescalings too; it equals the Euclidean one where that diagonal is 1.
        localizer: the metric of the localization term. ``"preconditioner"`` (default): the
            ``"fisher-burnin"`` preconditioner's metric M when that is the preconditioner (the
            invariant target above), the Euclidean ‖w − w*‖² otherwise. ``"euclidean"``: always
            (γ/2)‖w − w*‖², the localized posterior of Lau et al. (arXiv 2308.12108) and of
            :func:`hf_llc.reference_llc`, with any preconditioner. The two are different
            targets at finite γ wherever the loss is flat in some direction (a unit with zero
            outgoing weights): there the metric's localizer is weaker and λ̂ reads higher (see
            ``docs/reference_sampler.md``); the Euclidean one is not invariant to rescalings
            (a layer scaled by 10 is localized 100× more strongly).
        integrator: how a step turns the drift and the noise into a move. ``"euler"``
            (default): the Euler–Maruyama step w ← w − (ε/2)·A·∇U(w) + √ε·√A·ξ_t above, whose
            stationary law is wider than p by 1/(1 − εh/4) in a quadratic direction of
            preconditioned curvature h (so λ̂ reads high when many directions are near the
            stiffest). ``"leimkuhler-matthews"``: the same step with the noise averaged over
            two consecutive draws, √ε·√A·(ξ_t + ξ_{t+1})/2 (Leimkuhler & Matthews 2013, the
            overdamped limit of BAOAB): one gradient per step and the same stability (εh < 4) as
            Euler–Maruyama, and a stationary law that is exact on any Gaussian target for every
            stable ε, so the Euler inflation is gone and the bias left is of second order in ε
            on other targets. It keeps one more parameter-sized vector per chain (ξ_t, saved in
            checkpoints) and adds two element-wise passes to a step.
        nbeta: nβ, the inverse temperature times n. ``None`` (default) uses n / log n with
            n the number of samples in the dataset (never the batch size).
        batch_size: m, the minibatch size of each SGLD step.
        num_chains: number of independent chains.
        num_burnin: steps per chain before the first draw; never part of the estimate.
        num_draws: draws per chain that enter the estimate.
        draw_every: steps between consecutive draws (thinning).
        preconditioner: the diagonal A. ``"fisher-burnin"`` (default): A = 1/(F̂ + δ·mean F̂),
            F̂ the mean squared stochastic gradient of nβ·L over windows of the burn-in (re-
            estimated at the first half of the adaptation steps, then frozen, so the draws are
            SGLD with a constant A and the target is unchanged). Under a reparametrization
            w → D·w it becomes D·A·D, which makes the chain, and so λ̂, invariant to the
            rescaling symmetries of the model (per layer, per unit) without being told them.
            ``"rmsprop-burnin"``: the pSGLD RMSProp diagonal learned
            during burn-in and then held fixed; it evens out the curvature but is not invariant
            (A ∝ 1/√V goes only to D·A). ``"identity"``: plain SGLD.
            ``"rmsprop"``: pSGLD (Li et al. 2016) adapting at every step (biased: its Γ
            correction term is neglected, so the target is not exactly p). Or a user-given
            positive per-parameter diagonal (a dict name → tensor shaped like the parameter,
            or one flat tensor in ``named_parameters`` order).
        rmsprop_decay: α of the pSGLD running average V ← αV + (1 − α)g².
        rmsprop_eps: δ in A ∝ 1 / (δ·mean(√V) + √V), relative damping of pSGLD.
        fisher_damping: δ in A = 1/(F̂ + δ·mean F̂) of ``"fisher-burnin"``, the mean taken over
            each parameter tensor (so the damping is invariant to per-tensor rescaling); it only
            matters for coordinates ~1/δ below their tensor's mean.
        fisher_start: the first A of ``"fisher-burnin"``, used until its first re-estimate
            (other preconditioners ignore it, as they ignore ``fisher_damping``).
            ``"curvature"`` (default): constant on each parameter tensor, the scaling that gives
            every tensor's rows of √A·∇²L_B(w*)·√A the same size (≈ 1/(nβ·∂ᵢᵢL) on a diagonal
            Hessian), estimated with 48 Hessian-vector products at step 0
            (:func:`hf_llc.sampling.chain.fisher_start`); a tensor without curvature (rows of
            rounding size, such as a key bias) keeps 1/nβ. It goes to D·A·D under w → D·w,
            so the chain is the same chain in every scaling of the layers: on a ReLU network
            rescaled by α = 10⁻²…10², λ̂ reads 166.15 at every α. ``"flat"``: A ≡ 1/nβ, the
            earlier default, which is not equivariant; since A may grow at most 10-fold per
            window, a layer scaled by α far from 1 still ends the burn-in with another A
            (151.2–160.9 on that network). Runs saved with the flat start resume only with it.
        seed: base seed; chain c uses one ``torch.Generator`` seeded from (seed, c) for both its
            data order and its noise, so its result does not depend on the other chains.
        mala: record the Metropolis-adjusted Langevin acceptance probability of every proposal
            during the draws (a diagnostic; costs one extra forward and backward per step).
        init_loss_samples: compute L_n(w*) on the first this-many samples instead of all n
            (for very large datasets). ``None`` uses every sample.
        curvature_iters: power iterations per curvature estimate (``step_size="curvature"``).
        num_adaptations: how many times the step size is re-estimated during burn-in.
        probe_reach: how far from w* the first curvature step is probed, in noise steps
            √(εA)·ξ (``step_size="curvature"``): ε is moved towards c / λ_max at
            w* + ``probe_reach``·√(εA)·ξ until the two agree. A chain keeps that first ε for
            ``num_burnin / (num_adaptations + 1)`` steps before it is measured again, and at a
            flat w* (the origin of a deep linear network) it drifts out to where the loss is
            steep within them; a longer reach gives a step that is stable further out. At
            ``step_scale=0.6`` with ``integrator="leimkuhler-matthews"``, reach 1 (default)
            let chains diverge at all 8 held-out DLN origins (at 6 of them within 120 steps),
            reach 2 only at the width-1 bottlenecks 2,1,2 and 1,1,1,1. With a reach other than
            1 the step measured afresh after each re-estimate of the ``"fisher-burnin"``
            diagonal is probed the same way, around the chain's point: with the smaller first
            step, chains at the origin of a 5-layer width-50 DLN barely left it in their first
            window and a plain measurement there set ε = 5211, which diverged at once.
        divergence_factor: a chain diverges when its loss is not finite or
            L_B(w_t) − L_n(w*) exceeds ``divergence_factor`` × (|L_n(w*)| + d / nβ), d the number
            of sampled parameters (d/(2nβ) is the largest loss increase any LLC allows).
        divergence_retries: how many times a diverged chain starts again from w* with half
            the step size before it is given up (every divergence is reported either way).
        check_every: steps between the host-side checks for divergence (the only host sync).
        chain_mode: how the chains of one process run. ``"sequential"`` (default): one
            after another, each a plain forward and backward of the model; bit-identical for
            any number of processes, and the mode checkpointing (``output_dir``) uses.
            ``"batched"``: all of them as one computation, the model evaluated with
            ``torch.func.vmap`` over a leading chain dimension of the parameters and of the
            minibatches (each chain keeps its own generator, data order, step size and
            preconditioner, so its trace is the sequential one up to float rounding).
            ``"auto"``: batched when this process runs more than one chain and a trial step
            of the model under ``vmap`` succeeds, else sequential (with a one-line notice
            when the model cannot be vmapped).
        compile: ``torch.compile`` the loss-and-gradient function (both chain modes); results
            match eager up to float rounding. Compilation costs seconds to minutes up front,
            so it pays off only for long runs.
        robustness: after the estimate, run the same chains again at half the step size
            and report how far λ̂ moves in ``diagnostics["robustness"]``; the verdict warns
            when it moves more than 10% and more than 2 combined standard errors
            (discretization bias). Chain c runs again at the fixed step ε_c/2, ε_c the step
            it drew with: the configured or calibrated ε, or the one the curvature rule chose by
            the end of its burn-in, for twice the burn-in and twice the draws (the same Langevin
            time, so that only the discretization differs). Seeds and every other setting are
            the same. The estimate itself is unchanged; the run takes about three times as
            long. The half-step chains are not checkpointed (a resumed run reruns them).
        record_metric: keep each chain's localizer metric M (the diagonal of
            (γ/2)(w − w*)ᵀM(w − w*), fixed when the ``"fisher-burnin"`` preconditioner freezes)
            in ``LLCResult.localizer_metric``, one row of d numbers per chain (``None`` when
            the localizer is Euclidean). Chain c sampled exactly the posterior with row c's
            metric, so ``reference_llc(..., metric=result.localizer_metric)`` samples the same
            targets. Costs d floats per chain in memory and in the saved result.
    """

    step_size: float | str = _setting(
        "curvature",
        "ε: a number, 'curvature' (ε = step_scale / λ_max, per chain) or 'auto' (pilot chains "
        "choose ε; see hf-llc calibrate)",
        parse=parse_step_size,
    )
    step_scale: float = _setting(0.3, "c in ε = c / λ_max (the curvature step size)")
    localization: float = _setting(1.0, "γ, strength of the localization (γ/2)‖w − w*‖²")
    localizer: str = _setting(
        "preconditioner",
        "metric of the localization: the fisher-burnin preconditioner's (invariant) or "
        "'euclidean' (γ/2)‖w − w*‖² (the literature's; what reference_llc samples)",
        choices=LOCALIZERS,
    )
    integrator: str = _setting(
        "euler",
        "the SGLD step: 'euler' (Euler–Maruyama) or 'leimkuhler-matthews' (noise averaged over "
        "two consecutive draws: exact on Gaussian targets at every stable ε)",
        choices=INTEGRATORS,
    )
    nbeta: float | None = _setting(None, "nβ, inverse temperature times n (default n / log n)")
    batch_size: int = _setting(512, "minibatch size of each SGLD step")
    num_chains: int = _setting(4, "number of independent chains")
    num_burnin: int = _setting(2000, "steps per chain before the first draw")
    num_draws: int = _setting(3000, "draws per chain that enter the estimate")
    draw_every: int = _setting(1, "steps between consecutive draws (thinning)")
    preconditioner: Any = _setting(
        "fisher-burnin", "the diagonal preconditioner A", choices=PRECONDITIONERS
    )
    rmsprop_decay: float = _setting(0.99, "α of the RMSProp running average of g²")
    rmsprop_eps: float = _setting(0.1, "relative damping δ of the RMSProp preconditioners")
    fisher_damping: float = _setting(1e-4, "relative damping δ of fisher-burnin")
    fisher_start: str = _setting(
        "curvature",
        "the first A of fisher-burnin: 'curvature' (per tensor, equilibrating ∇²L at w*: "
        "equivariant, so the whole chain is invariant to layer rescaling) or 'flat' (1/nβ, "
        "the earlier default)",
        choices=FISHER_STARTS,
    )
    seed: int = _setting(
        0, "seed of the chains (chain c draws from (seed, c))", aliases=("--sampler-seed",)
    )
    mala: bool = _setting(False, "record the MALA acceptance of every draw (a diagnostic)")
    init_loss_samples: int | None = _setting(
        None, "compute L_n(w*) on the first N samples (default: all)"
    )
    curvature_iters: int = _setting(10, "power iterations per curvature estimate")
    num_adaptations: int = _setting(8, "step-size re-estimates during burn-in")
    probe_reach: float = _setting(
        1.0, "distance of the first step-size probe from w*, in noise steps √(εA)·ξ"
    )
    divergence_factor: float = _setting(
        1e3, "loss rise, in units of |L_n(w*)| + d/nβ, that counts as a divergence"
    )
    divergence_retries: int = _setting(2, "restarts of a diverged chain, each with half ε")
    check_every: int = _setting(50, "steps between divergence checks (the only host sync)")
    chain_mode: str = _setting(
        "sequential",
        "run a process's chains one after another, batched under torch.func.vmap, or 'auto' "
        "(batched when possible)",
        choices=CHAIN_MODES,
    )
    compile: bool = _setting(False, "torch.compile the loss and gradient")
    robustness: bool = _setting(
        False,
        "also rerun the chains at half their step size (each chain's ε/2, over twice the "
        "burn-in and draws: the same Langevin time) and report how far λ̂ moves "
        "(diagnostics['robustness'], checked by the verdict); about triples the run time",
    )
    record_metric: bool = _setting(
        False,
        "keep each chain's localizer metric M in the result (result.localizer_metric, d numbers "
        "per chain), e.g. for reference_llc(..., metric=...)",
    )

    def __post_init__(self) -> None:
        self.validate()

    @property
    def num_steps(self) -> int:
        """Total SGLD steps per chain: burn-in plus draws × thinning."""
        return self.num_burnin + self.num_draws * self.draw_every

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting and how to fix it."""
        if isinstance(self.step_size, str):
            if self.step_size not in STEP_SIZE_MODES:
                raise ValueError(
                    f"step_size={self.step_size!r} is not understood: pass a positive float, "
                    "'curvature' or 'auto'."
                )
        else:
            _positive_finite("step_size", self.step_size)
            _fits_float32("step_size", self.step_size)
        _positive_finite("step_scale", self.step_scale)
        if not (isinstance(self.localization, (int, float)) and math.isfinite(self.localization)):
            raise ValueError(
                f"localization must be a finite number ≥ 0, got {self.localization!r}."
            )
        if self.localization < 0:
            raise ValueError(
                f"localization must be ≥ 0 (γ of the Gaussian localization), got "
                f"{self.localization}; use 0 for none."
            )
        _fits_float32("localization", self.localization)
        if self.localizer not in LOCALIZERS:
            raise ValueError(
                f"localizer={self.localizer!r} is not known: use one of {LOCALIZERS} "
                "('euclidean' for (γ/2)‖w − w*‖², 'preconditioner' for the fisher-burnin metric)."
            )
        if self.integrator not in INTEGRATORS:
            raise ValueError(
                f"integrator={self.integrator!r} is not known: use one of {INTEGRATORS} "
                "('euler' for the Euler–Maruyama step, 'leimkuhler-matthews' for the step "
                "that is exact on Gaussian targets)."
            )
        if self.nbeta is not None:
            _positive_finite("nbeta", self.nbeta)
            _fits_float32("nbeta", self.nbeta)
        _positive_int("batch_size", self.batch_size)
        _positive_int("num_chains", self.num_chains)
        _nonneg_int("num_burnin", self.num_burnin)
        _positive_int("num_draws", self.num_draws)
        _positive_int("draw_every", self.draw_every)
        _positive_int("curvature_iters", self.curvature_iters)
        _nonneg_int("num_adaptations", self.num_adaptations)
        _positive_finite("probe_reach", self.probe_reach)
        _positive_int("check_every", self.check_every)
        _nonneg_int("divergence_retries", self.divergence_retries)
        _positive_finite("divergence_factor", self.divergence_factor)
        if self.init_loss_samples is not None:
            _positive_int("init_loss_samples", self.init_loss_samples)
        if isinstance(self.preconditioner, str) and self.preconditioner not in PRECONDITIONERS:
            raise ValueError(
                f"preconditioner={self.preconditioner!r} is not known: use one of "
                f"{PRECONDITIONERS} or pass a positive per-parameter diagonal."
            )
        if not 0.0 <= self.rmsprop_decay < 1.0:
            raise ValueError(f"rmsprop_decay must be in [0, 1), got {self.rmsprop_decay}.")
        _positive_finite("rmsprop_eps", self.rmsprop_eps)
        _positive_finite("fisher_damping", self.fisher_damping)
        if self.fisher_start not in FISHER_STARTS:
            raise ValueError(
                f"fisher_start={self.fisher_start!r} is not known: use one of {FISHER_STARTS} "
                "('flat' for A = 1/nβ, 'curvature' for the equivariant start from ∇²L at w*)."
            )
        if self.chain_mode not in CHAIN_MODES:
            raise ValueError(
                f"chain_mode={self.chain_mode!r} is not known: use one of {CHAIN_MODES}."
            )
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}.")
        if not isinstance(self.robustness, bool):
            raise ValueError(
                f"robustness must be True or False, got {self.robustness!r}: True reruns the "
                "chains at half the step size and reports how far λ̂ moves (CLI: --robustness)."
            )
        if not isinstance(self.record_metric, bool):
            raise ValueError(
                f"record_metric must be True or False, got {self.record_metric!r}: True keeps "
                "each chain's localizer metric in result.localizer_metric."
            )
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be an integer ≥ 0, got {self.seed!r}.")

    def to_dict(self) -> dict:
        """A JSON-friendly dict (a tensor preconditioner is recorded as ``"custom"``)."""
        out = asdict(self)
        if not isinstance(self.preconditioner, str):
            out["preconditioner"] = "custom"
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SamplerConfig:
        """The settings of a :meth:`to_dict` dict; keys that are not settings are ignored."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> SamplerConfig:
        """The recipe :data:`PRESETS` ``[name]``, with ``overrides`` on top (CLI: ``--preset``).

        ``SamplerConfig.from_preset("language-model", seed=1)``; the settings a preset does not
        name keep their defaults."""
        return cls(**{**preset_settings(name), **overrides})


#: Named recipes: settings that differ from the defaults, for a kind of model.
#:
#: ``"language-model"`` (evidence and cost: ``docs/language_models.md``): minibatches of 32
#: sequences and 500 + 1,000 steps per chain keep a run affordable on a GPU; ε = 0.6/λ_max
#: (twice the default) mixed on small GPT-2s where 0.3 left R-hat ≥ 1.15 even with chains twice
#: as long, and moved λ̂ by 2.3% against it (measured from the flat start). ``robustness``
#: reruns every chain at half its step over the same Langevin time, so the verdict itself says
#: when λ̂ depends on ε (about three times the cost). The preset as a whole on a 10⁵ GPT-2:
#: from the default's curvature start three seeds agree within one standard error, and the
#: rerun moves λ̂ 4.0% and 5.5% (seeds 0 and 2; 8–13% when it kept the step counts); from the
#: flat start the seeds disagree (``docs/language_models.md``).
PRESETS: dict[str, dict[str, Any]] = {
    "language-model": {
        "step_scale": 0.6,
        "batch_size": 32,
        "num_burnin": 500,
        "num_draws": 1000,
        "chain_mode": "auto",
        "robustness": True,
    },
}


def preset_settings(name: str) -> dict[str, Any]:
    """A copy of the settings of the preset ``name``; ValueError naming the presets."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is not known: use one of {sorted(PRESETS)}.")
    return dict(PRESETS[name])


def _positive_finite(name: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


def _fits_float32(name: str, value: float) -> None:
    """Settings that enter the fp32 sampling state must be finite there too."""
    if value > FLOAT32_MAX:
        raise ValueError(
            f"{name}={value!r} overflows float32 (the sampling state is fp32; its largest finite "
            f"value is {FLOAT32_MAX:.3g}): pass a much smaller {name}."
        )


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}.")


def _nonneg_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer ≥ 0, got {value!r}.")

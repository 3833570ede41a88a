"""Configuration of the deep linear network (DLN) validation architecture.

A DLN f(x) = W_L ··· W_1 x is the one family of deep networks whose learning coefficient λ is known
in closed form (Aoyagi 2024), so it is the reference problem for checking an LLC estimator.
"""

from __future__ import annotations

from dataclasses import field
from numbers import Integral

from transformers import PreTrainedConfig

LOSS_TYPES = ("gaussian_nll", "mse")


def _default_widths() -> list[int]:
    return [4, 4, 4]


class DLNConfig(PreTrainedConfig):
    r"""Configuration of a :class:`~hf_llc.models.dln.DLNModel`, a bias-free deep linear network.

    Args:
        widths: ``[H_0, H_1, …, H_L]``: the input width H_0, the hidden widths, and the output width
            H_L. At least two positive integers (two entries give a single linear layer). The
            network has L = ``len(widths) - 1`` weight matrices W_l of shape (H_l, H_{l-1}).
        loss_type: how the model's ``loss`` is computed from ``logits`` and ``labels``:

            - ``"gaussian_nll"`` (default): ½‖f(x) − y‖² summed over the H_L outputs and averaged
              over the batch. This is the negative log-likelihood of the Gaussian regression model
              y ~ N(f(x), I) up to an additive constant, which is the loss singular learning theory
              assumes when it defines the learning coefficient λ and the tempered posterior
              ∝ exp(−nβ·L_n(w)). With it, an estimator that uses nβ = n / log n targets Aoyagi's
              λ directly.
            - ``"mse"``: ‖f(x) − y‖² averaged over the outputs *and* the batch (the usual
              ``torch.nn.MSELoss``). This equals (2 / H_L) × the Gaussian NLL, so sampling at a
              nominal nβ samples the Gaussian posterior at an effective inverse temperature
              2nβ / H_L: the average over outputs divides the effective nβ by the output width
              (up to the factor 2 of the missing ½). Both losses give the same λ only
              asymptotically; at finite n the smaller effective inverse temperature widens the
              posterior, so the localisation term and higher-order terms of the loss bias λ̂
              differently. Compare against the theoretical λ with ``"gaussian_nll"``.
        **kwargs: passed to :class:`transformers.PreTrainedConfig`.

    Raises:
        ValueError: if ``widths`` is not a list of at least two positive integers, or
            ``loss_type`` is not one of ``"gaussian_nll"``, ``"mse"``.

    Example::

        >>> from hf_llc.models.dln import DLNConfig, DLNModel
        >>> config = DLNConfig(widths=[10, 5, 10])
        >>> model = DLNModel(config)
        >>> model.end_to_end_matrix().shape
        torch.Size([10, 10])
    """

    model_type = "hf_llc_dln"

    widths: list[int] = field(default_factory=_default_widths)
    loss_type: str = "gaussian_nll"

    def __post_init__(self, **kwargs):
        # Normalise before validating so that tuples and numpy integers (e.g. from a sweep) are
        # accepted and the config always serialises to a plain JSON list of ints.
        self.widths = _check_widths(self.widths)
        _check_loss_type(self.loss_type)
        super().__post_init__(**kwargs)

    def validate(self) -> None:
        """Re-check the DLN fields (also run by ``save_pretrained``), then the base checks.

        Raises:
            ValueError: if ``widths`` or ``loss_type`` was set to an invalid value after
                construction.
        """
        _check_widths(self.widths)
        _check_loss_type(self.loss_type)
        super().validate()

    @property
    def num_layers(self) -> int:
        """L, the number of weight matrices (``len(widths) - 1``)."""
        return len(self.widths) - 1


def _check_widths(widths) -> list[int]:
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise ValueError(
            f"`widths` must be a list of layer widths [H_0 (input), ..., H_L (output)], got "
            f"{widths!r}; pass e.g. widths=[4, 4, 4]."
        )
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(
            f"`widths` needs at least two entries (input and output width), got {widths!r}; "
            "pass e.g. widths=[4, 4] for a single linear layer."
        )
    for i, h in enumerate(widths):
        if isinstance(h, bool) or not isinstance(h, Integral) or h < 1:
            raise ValueError(
                f"`widths[{i}]` must be a positive integer, got {h!r} in widths={widths!r}; "
                "every layer width must be an int >= 1."
            )
    return [int(h) for h in widths]


def _check_loss_type(loss_type) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(
            f"`loss_type` must be one of {LOSS_TYPES}, got {loss_type!r}; use 'gaussian_nll' "
            "(½·squared error summed over outputs, the Gaussian NLL that singular learning "
            "theory assumes) unless you need torch's MSELoss convention."
        )


__all__ = ["DLNConfig", "LOSS_TYPES"]

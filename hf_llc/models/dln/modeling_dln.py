"""Deep linear network (DLN) model: f(x) = W_L ··· W_1 x, no biases, no nonlinearities.

The forward pass is a plain chain of ``nn.Linear`` layers with no in-place operations and no
Python control flow on tensor values, so it works unchanged under ``torch.func.functional_call``,
``torch.func.grad``/``vmap`` and ``torch.compile``, which SGLD samplers use to evaluate the loss at
parameters other than the module's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_dln import DLNConfig


@dataclass
class DLNOutput(ModelOutput):
    """Output of :class:`DLNModel`.

    Args:
        loss: scalar loss, the batch mean of :meth:`DLNModel.per_sample_loss`; only present when
            ``labels`` were passed.
        logits: the network output f(x), shape ``(..., H_L)``.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None


class DLNPreTrainedModel(PreTrainedModel):
    """Base class wiring :class:`DLNConfig` into ``PreTrainedModel`` (save/load, init, Auto*)."""

    config_class = DLNConfig
    config: DLNConfig
    base_model_prefix = "dln"
    main_input_name = "inputs"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise every linear layer with W ~ N(0, 1/fan_in) (variance-preserving)."""
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=1.0 / math.sqrt(module.in_features))
            if module.bias is not None:
                init.zeros_(module.bias)


class DLNModel(DLNPreTrainedModel):
    """Bias-free deep linear network f(x) = W_L ··· W_1 x built from ``config.widths``.

    ``self.layers[l-1]`` is ``nn.Linear(H_{l-1}, H_l, bias=False)`` holding W_l of shape
    (H_l, H_{l-1}); parameter names are ``layers.0.weight`` … ``layers.{L-1}.weight``.

    Args:
        config: the :class:`DLNConfig` (widths and loss type).

    Example::

        >>> import torch
        >>> from hf_llc.models.dln import DLNConfig, DLNModel
        >>> model = DLNModel(DLNConfig(widths=[3, 2, 4]))
        >>> x, y = torch.randn(8, 3), torch.randn(8, 4)
        >>> out = model(x, labels=y)
        >>> out.logits.shape, out.loss.shape
        (torch.Size([8, 4]), torch.Size([]))
    """

    def __init__(self, config: DLNConfig):
        super().__init__(config)
        widths = config.widths
        self.layers = nn.ModuleList(
            nn.Linear(h_in, h_out, bias=False) for h_in, h_out in zip(widths[:-1], widths[1:])
        )
        self.post_init()

    def forward(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DLNOutput | tuple[torch.Tensor, ...]:
        """Compute f(x) and, when ``labels`` are given, the loss.

        Args:
            inputs: x, shape ``(batch, H_0)`` (any leading dimensions are allowed).
            labels: y, shape matching the logits ``(batch, H_L)``; when given, ``loss`` is the
                batch mean of :meth:`per_sample_loss`.
            return_dict: return a :class:`DLNOutput` (default, ``config.return_dict``) or a tuple
                ``(loss, logits)`` / ``(logits,)``.
            **kwargs: ignored (accepts extra keys such as those a ``Trainer`` passes).

        Returns:
            :class:`DLNOutput` with ``loss`` (only when ``labels`` are given) and ``logits``.

        Raises:
            ValueError: if the last dimension of ``inputs`` is not H_0, or ``labels`` does not
                have the shape of the logits.
        """
        if inputs.shape[-1] != self.config.widths[0]:
            raise ValueError(
                f"`inputs` must have last dimension H_0 = {self.config.widths[0]} "
                f"(config.widths[0]), got shape {tuple(inputs.shape)}."
            )
        hidden = inputs
        for layer in self.layers:
            hidden = layer(hidden)
        logits = hidden

        loss = None
        if labels is not None:
            loss = self.per_sample_loss(logits, labels).mean()

        return_dict = return_dict if return_dict is not None else self.config.return_dict
        output = DLNOutput(loss=loss, logits=logits)
        return output if return_dict else output.to_tuple()

    def per_sample_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of each sample; its mean over the batch is the model's ``loss``.

        ``"gaussian_nll"``: ½‖f(x) − y‖² (summed over the H_L outputs). ``"mse"``:
        ‖f(x) − y‖² / H_L (averaged over the outputs).

        Args:
            logits: f(x), shape ``(batch, H_L)``.
            labels: y, same shape as ``logits``.

        Returns:
            Tensor of shape ``(batch,)`` (the leading dimensions of ``logits``).

        Raises:
            ValueError: if ``labels`` and ``logits`` differ in shape (no silent broadcasting).
        """
        if labels.shape != logits.shape:
            raise ValueError(
                f"`labels` must have the shape of the logits {tuple(logits.shape)} "
                f"(batch, H_L = {self.config.widths[-1]}), got {tuple(labels.shape)}."
            )
        # mse_loss without reduction is (f(x) − y)² element-wise, forward and backward in one
        # kernel each (a subtraction, a square and their backward would be four passes).
        dtype = torch.promote_types(logits.dtype, labels.dtype)  # as logits − labels would
        squared_error = nn.functional.mse_loss(logits.to(dtype), labels.to(dtype), reduction="none")
        if self.config.loss_type == "mse":
            return squared_error.mean(dim=-1)
        return 0.5 * squared_error.sum(dim=-1)

    def end_to_end_matrix(self) -> torch.Tensor:
        """The product W_L ··· W_1, shape (H_L, H_0): the linear map the network computes.

        Differentiable (not detached); wrap in ``torch.no_grad()`` to inspect it.
        """
        product = self.layers[0].weight
        for layer in self.layers[1:]:
            product = layer.weight @ product
        return product


__all__ = ["DLNModel", "DLNOutput", "DLNPreTrainedModel"]

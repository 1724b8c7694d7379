"""A Bayesian Flow Network = a flow (the paper's mathematics) + a network (an architecture).

:class:`BFN` computes what training, evaluation and the samplers need: the continuous- or
discrete-time loss of a batch, the reconstruction loss, and the output distribution for given
input parameters. Data use the official layouts: binary images (B, H, W, 1) and text (B, L) as
class indices, discretized images (B, H, W, C) as floats at bin centres in [-1, 1].
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn

from bfncli.config import BFNConfig, ContinuousFlow as ContinuousFlowConfig, Transformer
from bfncli.errors import UserError
from bfncli.flows import ContinuousFlow, DiscreteFlow

Flow = Union[ContinuousFlow, DiscreteFlow]


def make_flow(cfg: BFNConfig) -> Flow:
    """The flow object for a config (with its output distribution)."""
    f, out = cfg.flow, cfg.output
    if isinstance(f, ContinuousFlowConfig):
        return ContinuousFlow(
            min_variance=f.min_variance,
            output=out.kind,
            num_bins=out.num_bins,
            noise_pred=out.noise_pred,
            clip=out.clip,
            recon_num_bins=out.num_bins or cfg.data.num_bins,
            recon_std=out.recon_std,
            kl_samples=f.kl_samples,
        )
    return DiscreteFlow(
        n_classes=f.n_classes,
        max_sqrt_beta=f.max_sqrt_beta,
        kl_samples=f.kl_samples,
        discrete_time_kl=f.discrete_time_kl,
    )


def make_network(cfg: BFNConfig) -> nn.Module:
    from bfncli.networks import build_network

    net = cfg.network
    params = net.model_dump(exclude={"kind", "input_adapter", "output_adapter"})
    adapter = net.input_adapter
    input_adapter = (adapter.kind, adapter.model_dump(exclude={"kind"}))
    output = getattr(net, "output_adapter", None)
    output_adapter = ("output", output.model_dump()) if output is not None else None
    try:
        return build_network(net.kind, params, input_adapter, output_adapter)
    except ValueError as err:  # an architecture the config allowed but the network cannot be built with
        raise UserError(f"config error: the network cannot be built: {err}") from None


def data_shape(cfg: BFNConfig) -> tuple[int, ...]:
    """The shape of one example, as the network's input adapter expects it."""
    adapter = cfg.network.input_adapter
    if isinstance(cfg.network, Transformer):
        return (adapter.seq_len,)
    return (*adapter.input_shape, adapter.input_channels)


class BFN(nn.Module):
    """Flow + network. ``self.net`` holds every weight; the flow has none."""

    def __init__(self, cfg: BFNConfig, net: Optional[nn.Module] = None):
        super().__init__()
        self.cfg = cfg
        self.flow = make_flow(cfg)
        self.net = net if net is not None else make_network(cfg)
        self.data_shape = data_shape(cfg)
        self.discrete = isinstance(self.flow, DiscreteFlow)

    # ------------------------------------------------------------------------ the network
    def predict(self, input_params, t: Tensor, classes: Optional[Tensor] = None, guidance: float = 1.0):
        """p_O for input parameters (mu for continuous flows, theta for discrete) at time ``t``.

        ``t`` holds one time per example, shape (B,); so do ``classes`` (class indices, with
        ``network.num_classes`` meaning "no class"), for a class-conditional network only.
        Returns the output distribution over the flattened data dimensions, (B, D).

        Classifier-free guidance (Ho & Salimans 2022): with ``guidance`` w != 1 the network runs once
        on a batch of 2B, conditional and unconditional, and its outputs are mixed as
        out = out_uncond + w (out_cond - out_uncond). The outputs are what p_O is built from: logits
        for discrete data, the noise prediction (an affine function of the data prediction x_hat,
        so x_hat mixes the same way) and log-std for continuous data. w = 1 is the plain conditional
        model, w = 0 the unconditional one, w > 1 sharpens towards the class.
        """
        theta = input_params
        b = theta.shape[0]
        t_net = t.reshape(b, *([1] * len(self.data_shape))).expand(b, *self.data_shape)
        net_input = self.flow.net_input(theta)
        network = self.__dict__.get("network_call", self.net)  # the compiled network (bfncli.compiled), if any
        if classes is None:  # networks given to BFN directly (e.g. test oracles) may not take classes
            if guidance != 1.0:
                raise ValueError("classifier-free guidance needs classes")
            raw = network(net_input, t_net)
        elif guidance == 1.0:
            raw = network(net_input, t_net, classes)
        else:
            both = network(torch.cat([net_input, net_input]), torch.cat([t_net, t_net]),
                            torch.cat([classes, torch.full_like(classes, self.cfg.network.num_classes)]))
            cond, uncond = both.float().chunk(2)
            raw = uncond + guidance * (cond - uncond)
        with float32(raw.device):  # the network ran in the precision autocast chose, if any
            params = raw.float().reshape(b, -1, raw.shape[-1])  # (B, D, parameters per dimension)
            if self.discrete:
                return self.flow.output_distribution(params)
            d = params.shape[1]
            return self.flow.output_distribution(params, theta.reshape(b, d).float(), t.reshape(b, 1).float())

    def prior_prediction(self, batch: int, device=None):
        """p_O at t = 0 where it needs no network, else None. A noise-predicting continuous model's
        output is fixed there by the guard of sec. 4.1 (x_hat = 0, std = 1), whatever the network says."""
        if self.discrete or not self.flow.noise_pred:
            return None
        d = math.prod(self.data_shape)
        zeros = torch.zeros(batch, d, device=device)
        return self.flow.output_distribution(torch.zeros(batch, d, 2, device=device), zeros, zeros[:, :1])

    def forward(self, x: Tensor, n_steps: int = 0, generator: Optional[torch.Generator] = None,
                classes: Optional[Tensor] = None) -> Tensor:
        """The training loss (so that DistributedDataParallel sees a forward call)."""
        return self.loss(x, n_steps, generator, classes)

    # ----------------------------------------------------------------------------- losses
    def sample_t(self, batch: int, n_steps: int, device, generator=None) -> Tensor:
        """t ~ U(0, 1) for the continuous-time loss, t = (i - 1)/n with i ~ U{1..n} otherwise."""
        if n_steps:
            return torch.randint(0, n_steps, (batch,), device=device, generator=generator) / n_steps
        return torch.rand(batch, device=device, generator=generator)

    def _per_example(self, t: Tensor, x: Tensor) -> Tensor:
        return t.reshape(-1, *([1] * (x.dim() - 1)))

    def loss(self, x: Tensor, n_steps: int = 0, generator: Optional[torch.Generator] = None,
             classes: Optional[Tensor] = None) -> Tensor:
        """The loss of a batch in nats per data dimension: continuous-time (``n_steps`` = 0) or n-step;
        for a class-conditional network, given ``classes`` (B,) ("no class" = network.num_classes).

        Every random draw of the generator is made first (:meth:`draw`), in the order the eager
        computation made them, and the rest is a function of tensors alone (:meth:`loss_of_draws`),
        which ``torch.compile`` turns into one graph (see :mod:`bfncli.compiled`)."""
        return self.loss_of_draws(x, *self.draw(x, n_steps, generator), n_steps, classes)

    def draw(self, x: Tensor, n_steps: int, generator: Optional[torch.Generator] = None):
        """The loss's random draws: t, the flow's noise, and the discrete-time loss's Monte Carlo noise."""
        t = self.sample_t(x.shape[0], n_steps, x.device, generator)
        flow_noise = self.flow.flow_noise(x, generator)
        mc_noise = self.flow.loss_noise(x.reshape(x.shape[0], -1), generator) if n_steps else []
        return t, flow_noise, mc_noise

    def loss_of_draws(self, x: Tensor, t: Tensor, flow_noise: Tensor, mc_noise: list[Tensor], n_steps: int = 0,
                      classes: Optional[Tensor] = None) -> Tensor:
        """:meth:`loss` given its random draws (dropout inside the network aside)."""
        with float32(x.device):
            theta = self.flow.flow_sample(x, self._per_example(t, x), noise=flow_noise)
        dist = self.predict(theta, t, classes)
        with float32(x.device):
            flat = x.reshape(x.shape[0], -1)
            t_flat = t.reshape(-1, 1)
            if n_steps:
                per_dim = self.flow.discrete_time_loss(flat, dist, t_flat, n_steps, noise=mc_noise)
            else:
                per_dim = self.flow.continuous_time_loss(flat, dist, t_flat)
            return per_dim.mean()

    def reconstruction_loss(self, x: Tensor, generator: Optional[torch.Generator] = None,
                            classes: Optional[Tensor] = None) -> Tensor:
        """-log p_O(x | theta, 1) per data dimension, theta drawn from the flow at t = 1."""
        return self.reconstruction_of_draws(x, self.flow.flow_noise(x, generator), classes)

    def reconstruction_of_draws(self, x: Tensor, flow_noise: Tensor, classes: Optional[Tensor] = None) -> Tensor:
        """:meth:`reconstruction_loss` given the flow's noise."""
        t = torch.ones(x.shape[0], device=x.device)
        with float32(x.device):
            theta = self.flow.flow_sample(x, self._per_example(t, x), noise=flow_noise)
        dist = self.predict(theta, t, classes)
        with float32(x.device):
            return self.flow.reconstruction_loss(x.reshape(x.shape[0], -1), dist).mean()


def float32(device: torch.device):
    """A region where autocast is off: the flow's mathematics (bin probabilities, their means, the
    losses) stays in float32 whatever precision the network runs in, as in the official code.
    Under bf16 autocast, ``probs @ centres`` alone moved a 256-bin loss by 15%."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)

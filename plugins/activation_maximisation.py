"""Activation maximisation: the inputs a chosen channel responds to most (Erhan et al. 2009).

Lecture 11: gradient ascent on the input, from small noise, of one channel's response, with the
usual regularisers (L2 decay, jitter, blur, clipping to the data's range). All chosen channels are
optimised together as one batch. The function is pure: the model's parameters, gradients,
train/eval mode and the global random number generators are as they were.

Example:
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh())
    >>> activation_maximisation(net, "0", [0, 1], steps=5, input_shape=(1, 8, 8)).images.shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.transforms.v2.functional import gaussian_blur

from plugins.checks import PluginConfigError
from plugins.filter_grids import _evaluating, _model_device_dtype, _tapped, resolve_layer

__all__ = ["ActivationMaximisation", "activation_maximisation"]


def _unit_activation(out: Tensor, channels: Tensor, objective: str) -> Tensor:
    """Image ``k``'s response in channel ``channels[k]``: averaged over space, or at the centre unit."""
    picked = out[torch.arange(len(out), device=out.device), channels]
    if objective == "neuron" and picked.dim() > 1:
        centre: tuple[slice | int, ...] = (slice(None), *(s // 2 for s in picked.shape[1:]))
        return picked[centre]
    return picked.reshape(len(out), -1).mean(dim=1)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """``x`` blurred by a Gaussian of ``sigma`` pixels, truncated at ``ceil(2 sigma)`` (at least 1,
    at most the image's size less one) and reflected at the borders."""
    radius = max(1, math.ceil(2 * sigma))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if radius < 1:
        return x
    return gaussian_blur(x, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])


@dataclass
class ActivationMaximisation:
    """What :func:`activation_maximisation` found, one row per channel.

    Attributes:
        layer: the layer's full name.
        channels: the channels maximised, ``channels[k]`` by ``images[k]``.
        images: the inputs found, ``(K, *input_shape)``.
        activation: the response of channel ``channels[k]`` to ``images[k]`` (averaged over space, or at
            the centre unit, as the ``objective`` said), ``(K,)``.
        random_activation: the root mean square of the same channel's response to random inputs of
            the same size (Gaussian noise scaled to the L2 norm of ``images[k]``), ``(K,)``: the
            response to an image of that energy that was not chosen for the channel.

    Example:
        >>> r = ActivationMaximisation("conv1", [0], torch.zeros(1, 1, 4, 4), torch.tensor([5.0]),
        ...                            torch.tensor([0.5]))
        >>> r.gain
        tensor([10.])
    """

    layer: str
    channels: list[int]
    images: Tensor
    activation: Tensor
    random_activation: Tensor

    @property
    def gain(self) -> Tensor:
        """``activation / random_activation``: how far above a random input's response each image is."""
        return self.activation / self.random_activation.clamp_min(1e-12)


def activation_maximisation(
    model: nn.Module,
    layer: str,
    channels: int | Sequence[int],
    steps: int = 128,
    *,
    input_shape: Sequence[int],
    objective: str = "neuron",
    lr: float = 0.05,
    l2: float = 1e-2,
    jitter: int = 1,
    blur_every: int = 4,
    blur_sigma: float = 0.5,
    init_std: float = 0.1,
    pixel_range: tuple[float, float] | None = None,
    n_random: int = 32,
    seed: int = 0,
) -> ActivationMaximisation:
    """Inputs that maximise the response of chosen channels of ``layer`` (Erhan et al. 2009).

    Gradient ascent (``torch.optim.Adam`` on the pixels) from small Gaussian noise on
    ``response - l2 * mean(x**2)``, with the usual regularisers: L2 decay, a random shift of up to
    ``jitter`` pixels at each step, a Gaussian blur (``torchvision``'s) every ``blur_every`` steps,
    and optionally clipping to ``pixel_range``. All channels are
    optimised together as one batch, one image per channel. The model runs in eval mode; only the
    input receives gradients (the parameters' ``.grad`` are untouched), and the noise comes from a
    private generator seeded with ``seed`` (the global RNG is untouched).

    Args:
        model: maps a batch of images to outputs; ``layer`` must be called by its forward.
        layer: the layer's name in ``model.named_modules()`` (conv or linear).
        channels: one channel or a list of channels of ``layer``'s output.
        steps: gradient-ascent steps.
        input_shape: the shape of one input, e.g. ``(1, 28, 28)``.
        objective: ``"neuron"`` maximises the response of the channel's unit at the centre of its map
            (a localised pattern; for a first, linear layer the filter's own pattern); ``"channel"``
            its response averaged over all positions (a texture; for a first, linear layer this
            degenerates to a uniform image).
        lr: Adam's learning rate on the pixels.
        l2: weight of the L2 penalty on the pixels.
        jitter: largest random shift per step, in pixels (0: none).
        blur_every: blur the image every this many steps (0: never).
        blur_sigma: the blur's standard deviation in pixels.
        init_std: standard deviation of the starting noise.
        pixel_range: ``(low, high)`` to clip the pixels to, e.g. the data's range; ``None``: no clip.
        n_random: how many random inputs of the same norm give
            :attr:`ActivationMaximisation.random_activation`, per channel.
        seed: seed of the starting noise, the jitter and the random inputs.

    Example:
        >>> torch.manual_seed(0) and None
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 5), nn.Tanh(), nn.Conv2d(4, 8, 5))
        >>> r = activation_maximisation(net, "2", [0, 3], steps=30, input_shape=(1, 16, 16))
        >>> r.images.shape, r.activation.shape, bool((r.gain > 1).all())
        (torch.Size([2, 1, 16, 16]), torch.Size([2]), True)
    """
    chosen = [int(channels)] if isinstance(channels, int) else [int(c) for c in channels]
    if not chosen:
        raise PluginConfigError("activation_maximisation needs at least one channel")
    if objective not in ("neuron", "channel"):
        raise PluginConfigError(
            f"activation_maximisation(objective={objective!r}): use 'neuron' (the centre unit) or "
            "'channel' (the mean over space)"
        )
    if steps < 0 or n_random < 1:
        raise PluginConfigError(
            f"activation_maximisation(steps={steps}, n_random={n_random}): use steps >= 0 and n_random >= 1"
        )
    name, _ = resolve_layer(model, layer)
    device, dtype = _model_device_dtype(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape = (len(chosen), *[int(s) for s in input_shape])
    idx = torch.tensor(chosen, device=device)
    with (
        _evaluating(model),
        _tapped(model, name) as output_of,
        torch.inference_mode(False),
        torch.enable_grad(),
    ):
        with torch.no_grad():
            width = output_of(torch.zeros(shape, device=device, dtype=dtype)).shape[1]
        if min(chosen) < 0 or max(chosen) >= width:
            raise PluginConfigError(
                f"layer {name!r} has {width} channels (0 to {width - 1}); got channels {chosen}"
            )
        x = (torch.randn(shape, generator=gen) * init_std).to(device, dtype).requires_grad_(True)
        spatial = len(shape) >= 4
        adam = torch.optim.Adam([x], lr=lr)  # its default betas (0.9, 0.999) and eps 1e-8
        for step in range(steps):
            shifted = x
            if jitter > 0 and spatial:
                dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=gen))
                shifted = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
            response = _unit_activation(output_of(shifted), idx, objective)
            score = response.sum() - l2 * x.pow(2).flatten(1).mean(dim=1).sum()
            # the input's gradient alone: the parameters' .grad stay as they were
            x.grad = torch.autograd.grad(-score, x)[0]
            adam.step()
            with torch.no_grad():
                if blur_every > 0 and spatial and (step + 1) % blur_every == 0:
                    x.copy_(_gaussian_blur(x, blur_sigma))
                if pixel_range is not None:
                    x.clamp_(*pixel_range)
        images = x.detach()
        with torch.no_grad():
            reached = _unit_activation(output_of(images), idx, objective)
            noise = torch.randn((len(chosen), n_random, *shape[1:]), generator=gen).to(device, dtype)
            norms = images.flatten(1).norm(dim=1).reshape(-1, 1, *[1] * (len(shape) - 1))
            noise = noise / noise.flatten(2).norm(dim=2).reshape(norms.shape[0], n_random, *norms.shape[2:])
            out = output_of((noise * norms).reshape(-1, *shape[1:]))
            random = _unit_activation(out, idx.repeat_interleave(n_random), objective).reshape(-1, n_random)
            random_rms = random.pow(2).mean(dim=1).sqrt()
    return ActivationMaximisation(name, chosen, images, reached.detach(), random_rms.detach())

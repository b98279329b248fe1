"""What a CNN has learned: filter grids, activation maps, activation maximisation and saliency.

Lecture 11 (Zeiler and Fergus; Erhan et al.; Simonyan et al.) and lecture 12 (the scattering
transform as a fixed CNN) look at the filters of a convolutional network and at its responses.
This module holds one callback, :class:`FilterVisualisation`, that draws the pictures during
training so that runs can be compared. The pictures come from pure functions a notebook can call
(they know nothing of Trainers and never change the model: its parameters, gradients, train/eval
mode and the global random number generators are as they were), each importable from here too:

- :func:`~plugins.filter_grids.filter_grid` -- one image ``(C, H, W)`` in ``[0, 1]`` tiling a conv
  layer's filters, and :func:`~plugins.filter_grids.activation_maps` -- the responses of a named
  layer to probe images (:mod:`plugins.filter_grids`);
- :func:`~plugins.activation_maximisation.activation_maximisation` -- inputs that maximise chosen
  channels (gradient ascent from noise with L2 decay, jitter and blur), batched over channels
  (:mod:`plugins.activation_maximisation`);
- :func:`~plugins.saliency.saliency` -- input-gradient maps of a class score (Simonyan et al.
  2014; :mod:`plugins.saliency`).

The pictures themselves are drawn by :mod:`plugins.filter_pictures`.

Layers are named as in ``model.named_modules()`` (``"model.conv1"`` inside a task); a name that
is the unique last part of one (``"conv1"``) is accepted too. A wrong name gets an error that
lists the conv layers.

The protocol a probed module must offer: ``pl_module(x)`` maps a batch of images to outputs
(class scores, for :func:`saliency`), and its ``nn.Conv2d`` layers are found through
``named_modules()``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    >>> filter_grid(net[0]).shape
    torch.Size([1, 9, 9])
    >>> activation_maps(net, torch.randn(2, 1, 8, 8), "0").shape
    torch.Size([2, 4, 6, 6])
    >>> saliency(net, torch.randn(2, 1, 8, 8), target=3).shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch  # noqa: F401  (the examples use it)
from lightning.pytorch.utilities import rank_zero_deprecation
from torch import Tensor, nn
from typing_extensions import override

from plugins.activation_maximisation import ActivationMaximisation, activation_maximisation
from plugins.base import (
    DiagnosticCallback,
    ProbeResult,
    probe_inputs,
    require_layers,
    share_work,
)
from plugins.checks import PluginConfigError, check_moments
from plugins.filter_grids import activation_maps, filter_grid, resolve_layer
from plugins.filter_pictures import _display, _join, _maps_image, _picture, _rgb, _strip_picture
from plugins.forward import ForwardFn, probes_through_forward_fn
from plugins.pictures import image_grid as _tile
from plugins.saliency import saliency

__all__ = [
    "ActivationMaximisation",
    "FilterVisualisation",
    "activation_maps",
    "activation_maximisation",
    "filter_grid",
    "resolve_layer",
    "saliency",
]


# --------------------------------------------------------------------------- callback


class FilterVisualisation(DiagnosticCallback):
    """Filter grids, activation maps and (optionally) activation-maximisation images during training.

    At every probe (by default at init, after every epoch and at the end), for each chosen conv
    layer: the :func:`filter_grid`, the :func:`activation_maps` of the first ``num_images`` probe
    images, and with ``maximise=True`` the :func:`activation_maximisation` images of its channels
    (at the probes named by ``maximise_at``); with ``saliency=True`` also the :func:`saliency` maps
    of the probe images. A strip of the first layer's filter grids at every probe so far shows how
    the filters evolved. The pictures are
    drawn straight from their pixels (PIL, no matplotlib figure: a few milliseconds each) and go to
    W&B (``filters/<picture>_<layer>`` images, captioned with when and at which step) and as PNGs
    into ``<run dir>/plugins/filters/``, the raw grids, weights and maps into ``step_<N>.npz``, and
    scalars (``filters/<layer>/filter_norm``, ``.../activation_rms``, ``.../act_max_gain``) to
    every logger. The strip's grids are part of the checkpoint, so a resumed run continues it.

    Needs: ``pl_module(x)`` (or ``forward_fn``) on a batch of images, and at least one ``nn.Conv2d`` layer.
        Under DDP
    the chosen layers' activation maximisations (the dear part) are shared across ranks, one
    contiguous share of layers each; global rank zero draws the pictures and logs.

    Args:
        layers: conv layers to show, named as in ``pl_module.named_modules()`` (``None``: the first).
        num_images: probe images whose activation maps (and saliency) are shown.
        maximise: also compute activation-maximisation images (costs ``maximise_steps`` forward
            and backward passes of one small batch per layer and maximising probe: the dearest part
            of a probe by far; ``experiments/cnn_filters.yaml`` maximises at the end only, 64 steps).
        maximise_channels: how many channels to maximise (the first ones), or a list of channels.
        maximise_steps: gradient-ascent steps of each activation maximisation (on a trained
            LeNet-5, 64 steps give images of cosine 0.97 (conv1) and 0.99 (conv2) to those of 128
            steps, at half the cost).
        maximise_at: at which probes to maximise: any of ``"init"``, ``"step"``, ``"epoch"``, ``"end"``
            (default: at init and at the end, the before/after picture; ``["end"]`` alone halves
            the cost; the last epoch's probe counts as the end). A probe called outside a Trainer
            always maximises. The ``*_at`` name of ``HessianEigenvalues(density_at=...)``.
        maximise_objective: ``"neuron"`` (the centre unit: a localised pattern, for a first layer the
            filter itself) or ``"channel"`` (the mean over all positions: a texture); pixels are kept
            in the probe images' range, so the images look like data.
        saliency: also show the input-gradient maps of the predicted class.
        forward_fn: ``forward_fn(module, x) -> output``, for a module whose ``forward`` takes more
            than the images; default ``pl_module(x)``.
        maximise_on: the old name of ``maximise_at`` (deprecated: it warns).
        every_n_epochs: probe after every ``n``-th epoch (default here: 1).
        at_end: probe when training ends (default here: yes).
        probe_size: images in the fixed probe batch (default: ``num_images``).
        **schedule: ``at_init``, ``every_n_steps``, ``probe_seed`` of
            :class:`~plugins.base.DiagnosticCallback`.

    Two instances on different ``layers`` can be attached together: each keeps its own history
    and strip in the checkpoint (their ``state_key`` differs).

    Example:
        >>> cb = FilterVisualisation(layers=["conv1"], maximise=True, every_n_epochs=2)
        >>> net = nn.Sequential(nn.Conv2d(1, 6, 5), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 24 * 24, 10))
        >>> try:
        ...     cb.check_module(net)
        ... except PluginConfigError as err:
        ...     print(err)  # doctest: +ELLIPSIS
        Sequential: no layer is named 'conv1'. Its conv layers are ['0']; ...
        >>> cb = FilterVisualisation(maximise=True, maximise_steps=5)
        >>> result = cb.probe(net, torch.randn(4, 1, 28, 28))
        >>> sorted(result.images)
        ['activation_maps_0', 'activation_maximisation_0', 'filter_grid_0', 'filter_strip_0']
    """

    name = "filters"
    distributed = True  # under DDP the layers' activation maximisations are shared across ranks
    runs_train_mode = False
    needs_forward = True
    state_key_args = ("layers",)

    def __init__(
        self,
        layers: list[str] | None = None,
        num_images: int = 4,
        maximise: bool = False,
        maximise_channels: int | list[int] = 16,
        maximise_steps: int = 128,
        maximise_objective: str = "neuron",
        maximise_at: list[str] | None = None,
        saliency: bool = False,
        forward_fn: ForwardFn | None = None,
        maximise_on: list[str] | None = None,
        *,
        every_n_epochs: int | None = 1,
        at_end: bool = True,
        probe_size: int | None = None,
        **schedule: Any,
    ) -> None:
        if not isinstance(num_images, int) or num_images < 1:
            raise PluginConfigError(f"FilterVisualisation(num_images={num_images!r}): show at least 1")
        if maximise_objective not in ("neuron", "channel"):
            raise PluginConfigError(
                f"FilterVisualisation(maximise_objective={maximise_objective!r}): use 'neuron' or 'channel'"
            )
        if maximise_on is not None:
            if maximise_at is not None:
                raise PluginConfigError(
                    "FilterVisualisation: give maximise_at only (maximise_on is its old name)"
                )
            rank_zero_deprecation(
                "FilterVisualisation(maximise_on=...) is renamed maximise_at=..., like "
                "HessianEigenvalues(density_at=...); maximise_on will be removed"
            )
            maximise_at = maximise_on
        maximise_at = ["init", "end"] if maximise_at is None else maximise_at
        maximise_at = check_moments("FilterVisualisation", "maximise_at", maximise_at)
        if isinstance(maximise_channels, int) and maximise_channels < 1:
            raise PluginConfigError(
                f"FilterVisualisation(maximise_channels={maximise_channels}): give a count >= 1 or a list"
            )
        super().__init__(
            every_n_epochs=every_n_epochs, at_end=at_end, probe_size=probe_size or num_images, **schedule
        )
        self.layers = list(layers) if layers else None
        self.num_images, self.show_saliency = num_images, saliency
        self.maximise, self.maximise_channels = maximise, maximise_channels
        self.maximise_steps, self.maximise_objective = maximise_steps, maximise_objective
        self.maximise_at = maximise_at
        self.forward_fn = forward_fn
        self.strip: list[tuple[int, Tensor]] = []

    @property
    def maximise_on(self) -> list[str]:
        """The old name of :attr:`maximise_at` (deprecated)."""
        return self.maximise_at

    def _conv_layers(self, pl_module: nn.Module) -> list[tuple[str, nn.Conv2d]]:
        convs = require_layers(type(self).__name__, pl_module, nn.Conv2d)
        if self.layers is None:
            return convs[:1]
        chosen = []
        for layer in self.layers:
            name, module = resolve_layer(pl_module, layer)
            if not isinstance(module, nn.Conv2d):
                raise PluginConfigError(
                    f"FilterVisualisation shows conv filters, and {name!r} is a {type(module).__name__}: "
                    f"choose among the conv layers {[n for n, _ in convs]}"
                )
            chosen.append((name, module))
        return chosen

    def check_module(self, pl_module: L.LightningModule) -> None:
        """Refuse, at setup, a module with no conv layer or a chosen layer that is not a conv layer."""
        self._conv_layers(pl_module)

    def _channels(self, conv: nn.Conv2d) -> list[int]:
        if isinstance(self.maximise_channels, int):
            return list(range(min(self.maximise_channels, conv.out_channels)))
        return list(self.maximise_channels)

    @probes_through_forward_fn
    def probe(self, pl_module: L.LightningModule, batch: Any) -> ProbeResult:
        """Filter grids, activation maps and the optional images of the chosen conv layers on ``batch``."""
        x = probe_inputs(batch)[: self.num_images]
        convs = self._conv_layers(pl_module)
        # the fit's last probe stands for the end probe, which the base skips at the same step
        when = "end" if self.probe_is_last else self.probe_when
        maximise = self.maximise and (self.probe_step is None or when in self.maximise_at)
        maximised = share_work(
            convs if maximise else [],
            lambda share: [self._maximise(pl_module, name, conv, x) for name, conv in share],
            "FilterVisualisation's probe",
        )
        if maximised is None:  # another rank than zero: its layers are maximised, rank zero draws
            return ProbeResult()
        result = ProbeResult()
        for index, (name, conv) in enumerate(convs):
            grid = filter_grid(conv)
            maps = activation_maps(pl_module, x, name)
            title = f"{name}: {conv.out_channels} filters, each stretched to [0, 1]"
            result.images[f"filter_grid_{name}"] = _picture(_rgb(grid[None])[0], title)
            title = f"{name}: activation maps of channels 0-{maps.shape[1] - 1} (red +, blue -)"
            result.images[f"activation_maps_{name}"] = _picture(_maps_image(x, maps), title)
            result.arrays.update({f"filter_grid_{name}": grid, f"weight_{name}": conv.weight})
            result.arrays[f"activation_maps_{name}"] = maps
            result.scalars[f"{name}/filter_norm"] = float(conv.weight.detach().flatten(1).norm(dim=1).mean())
            result.scalars[f"{name}/activation_rms"] = float(maps.pow(2).mean().sqrt())
            if index == 0:
                step = self.probe_step if self.probe_step is not None else len(self.strip)
                self.strip.append((step, grid))
                steps, grids = [s for s, _ in self.strip], [g for _, g in self.strip]
                title = f"{name} filters during training"
                result.images[f"filter_strip_{name}"] = _strip_picture(grids, steps, title)
            if maximise:
                found = maximised[index]
                tiles = _tile(_rgb(_display(found.images)), min(8, len(found.channels)), 1, 1.0)
                title = f"{name}: inputs maximising channels {found.channels[0]}-{found.channels[-1]}"
                result.images[f"activation_maximisation_{name}"] = _picture(tiles, title)
                result.arrays[f"act_max_images_{name}"] = found.images
                result.arrays[f"act_max_activation_{name}"] = found.activation
                result.arrays[f"act_max_random_{name}"] = found.random_activation
                result.scalars[f"{name}/act_max_gain"] = float(found.gain.mean())
        if self.show_saliency:
            grads = saliency(pl_module, x)
            inputs = _tile(_rgb(_display(x)), len(x), 1, 1.0)
            maps = _tile(_rgb(_display(grads.abs().amax(dim=1, keepdim=True)), "hot"), len(x), 1, 1.0)
            title = "saliency |d score / d pixel| of the predicted class"
            result.images["saliency"] = _picture(_join(inputs, maps, dim=1), title)
            result.arrays["saliency"] = grads
        return result

    def _maximise(
        self, pl_module: nn.Module, name: str, conv: nn.Conv2d, x: Tensor
    ) -> ActivationMaximisation:
        return activation_maximisation(
            pl_module,
            name,
            self._channels(conv),
            self.maximise_steps,
            input_shape=tuple(x.shape[1:]),
            objective=self.maximise_objective,
            pixel_range=(float(x.min()), float(x.max())),
            seed=self.probe_seed,
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "strip": [(s, g.clone()) for s, g in self.strip]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.strip = [(int(s), g) for s, g in state_dict.get("strip", [])]

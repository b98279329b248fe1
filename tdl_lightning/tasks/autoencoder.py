"""Autoencoders (plain and denoising) and the variational autoencoder, on pixels in ``[0, 1]``.

Both tasks take an architecture with an ``encoder`` and a ``decoder`` returning logits
(:class:`~tdl_lightning.models.MLPAutoencoder`, :class:`~tdl_lightning.models.ConvAutoencoder`)
and offer the same protocol to plugins and picture callbacks:

- ``loss(batch)``: the training objective, with its noise (corruption, reparameterisation) drawn
  from a fixed seed, so that it is a deterministic function of the parameters that Hessian and
  landscape plugins can probe; ``training_step`` draws fresh noise instead.
- ``pl_module(x)``: images ``(n, *input_shape)`` -> reconstructions; codes ``(n, latent_dim)`` ->
  decoded images. ``decoder`` and ``encoder`` are submodules, for a Jacobian of the decoder alone.
- ``encode(x)``, ``decode(z)``, ``reconstruct(x)`` and, for the VAE, ``sample(n, seed)``.

Logged (``<stage>`` is ``train``, ``val`` or ``test``): ``<stage>/loss``; on ``val``/``test`` also
``recon_mse`` (per-pixel MSE of the clean reconstruction) and ``pca_mse``, the same for PCA with as
many components as the latent size, fitted on the training split: the baseline to beat. The VAE
adds ``nelbo_nats``, ``recon_nats``, ``kl_nats`` (per image) and, with ``iw_samples``,
``iw_nelbo_nats``, the importance-weighted bound of Burda et al. (2016).

Example:
    >>> import torch
    >>> from tdl_lightning.models import MLPAutoencoder
    >>> task = Autoencoder(MLPAutoencoder(hidden_dims=(32,), latent_dim=2))
    >>> x = torch.rand(4, 1, 28, 28)
    >>> task(x).shape, task(torch.zeros(4, 2)).shape, task.loss((x, None)).shape
    (torch.Size([4, 1, 28, 28]), torch.Size([4, 1, 28, 28]), torch.Size([]))
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from tdl_lightning.errors import ConfigError
from tdl_lightning.tasks.base import Task
from tdl_lightning.tasks.metrics import PCABaseline, check_unit_interval, training_split

__all__ = ["Autoencoder", "VAE", "fixed_generator"]


def fixed_generator(like: Tensor, seed: int = 0) -> torch.Generator:
    """A random generator on ``like``'s device with a fixed seed: the common random numbers of ``loss``.

    Example:
        >>> a = torch.randn(3, generator=fixed_generator(torch.zeros(1)))
        >>> torch.equal(a, torch.randn(3, generator=fixed_generator(torch.zeros(1))))
        True
    """
    return torch.Generator(device=like.device).manual_seed(seed)


def _normal(like: Tensor, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


class _ReconstructionTask(Task):
    """What the autoencoder tasks share: codes, pixels, the PCA baseline and the logged metrics."""

    def __init__(self, model: nn.Module, pca_baseline: bool = True) -> None:
        super().__init__(model)
        missing = [a for a in ("encoder", "decoder", "latent_dim") if not hasattr(model, a)]
        if missing:
            raise ConfigError(
                f"{type(self).__name__} needs an architecture with an encoder, a decoder and a latent_dim; "
                f"{type(model).__name__} lacks {missing}: use MLPAutoencoder or ConvAutoencoder"
            )
        self.latent_dim = int(cast(int, model.latent_dim))
        self.pca = PCABaseline(self.latent_dim) if pca_baseline else None
        self._checked_pixels = False

    @property
    def encoder(self) -> nn.Module:
        """The architecture's encoder (image -> code; mean and log-variance for the VAE)."""
        return cast(nn.Module, self.model.encoder)

    @property
    def decoder(self) -> nn.Module:
        """The architecture's decoder (code -> pixel logits): the map a decoder Jacobian probes."""
        return cast(nn.Module, self.model.decoder)

    def encode(self, x: Tensor) -> Tensor:
        """The code of ``x`` (the posterior mean for the VAE), shape ``(n, latent_dim)``."""
        return self.encoder(x)[:, : self.latent_dim]

    def decode(self, z: Tensor) -> Tensor:
        """Pixels in ``[0, 1]`` decoded from codes ``z`` (the decoder's mean for the VAE)."""
        return torch.sigmoid(self.decoder(z))

    def reconstruct(self, x: Tensor) -> Tensor:
        """``decode(encode(x))``: the clean reconstruction."""
        return self.decode(self.encode(x))

    @override
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and x.shape[1] == self.latent_dim:
            return self.decode(x)
        return self.reconstruct(x)

    def objective(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss on images ``x`` and the parts to log beside it. Subclasses implement this."""
        raise NotImplementedError

    def loss(self, batch: Any) -> Tensor:
        """The training objective on ``batch = (images, labels)``, its noise drawn from a fixed seed.

        Example:
            >>> from tdl_lightning.models import MLPAutoencoder
            >>> task = Autoencoder(MLPAutoencoder(hidden_dims=(8,), latent_dim=2), noise_level=0.3)
            >>> x = torch.rand(2, 1, 28, 28)
            >>> bool(task.loss((x,)) == task.loss((x,)))
            True
        """
        x = batch[0]
        return self.objective(x, fixed_generator(x))[0]

    def eval_metrics(self, x: Tensor) -> dict[str, Tensor]:
        """Metrics beyond the objective on validation/test images (the reconstruction MSEs)."""
        metrics = {"recon_mse": F.mse_loss(self.reconstruct(x), x)}
        if self.pca is not None and self.pca.fitted:
            metrics["pca_mse"] = self.pca.mse(x)
        return metrics

    def _log_all(self, stage: str, loss: Tensor, parts: dict[str, Tensor], n: int) -> None:
        sync = stage != "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=not sync,
            on_epoch=True,
            prog_bar=True,
            sync_dist=sync,
            batch_size=n,
        )
        for key, value in parts.items():
            self.log(f"{stage}/{key}", value, on_step=False, on_epoch=True, sync_dist=sync, batch_size=n)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0]
        if not self._checked_pixels:
            check_unit_interval(x, type(self).__name__)
            self._checked_pixels = True
        loss, parts = self.objective(x, None)
        self._log_all("train", loss, parts, len(x))
        return loss

    def _eval_step(self, batch: Any, stage: str) -> Tensor:
        x = batch[0]
        loss, parts = self.objective(x, fixed_generator(x))
        self._log_all(stage, loss, {**parts, **self.eval_metrics(x)}, len(x))
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.reconstruct(batch[0])

    @override
    def on_fit_start(self) -> None:
        self._fit_pca()

    @override
    def on_test_start(self) -> None:
        self._fit_pca()

    def _fit_pca(self) -> None:
        if self.pca is None or self.pca.fitted:
            return
        data = training_split(self.trainer, max_samples=20_000)
        if data is None:
            rank_zero_warn(
                f"{type(self).__name__}: no training data to fit the PCA baseline; pca_mse is not logged"
            )
            return
        with torch.inference_mode(False):
            self.pca.fit(data[0].to(self.device).clone())


class Autoencoder(_ReconstructionTask):
    """An autoencoder trained to reconstruct its input; with ``noise_level > 0`` a denoising one.

    The denoising autoencoder (Vincent et al. 2008) sees a corrupted image and is scored against
    the clean one. ``recon_mse`` is always measured on clean inputs.

    Args:
        model: architecture with ``encoder``, ``decoder`` (logits) and ``latent_dim``, not variational.
        reconstruction_loss: ``mse`` (per-pixel squared error of ``sigmoid(logits)``) or ``bce``
            (per-pixel binary cross-entropy on the logits).
        noise: corruption of the denoising autoencoder: ``gaussian`` (add ``noise_level * N(0, 1)``,
            clip to ``[0, 1]``) or ``masking`` (zero each pixel with probability ``noise_level``).
        noise_level: 0 for a plain autoencoder.
        pca_baseline: log ``pca_mse``, PCA's reconstruction error at the same latent size.

    Example:
        >>> from tdl_lightning.models import ConvAutoencoder
        >>> net = ConvAutoencoder(channels=(4, 8), latent_dim=3)
        >>> task = Autoencoder(net, noise="masking", noise_level=0.5)
        >>> x = torch.ones(2, 1, 28, 28)
        >>> float(task.corrupt(x, fixed_generator(x)).mean()) < 0.6
        True
    """

    def __init__(
        self,
        model: nn.Module,
        reconstruction_loss: str = "mse",
        noise: str = "gaussian",
        noise_level: float = 0.0,
        pca_baseline: bool = True,
    ) -> None:
        super().__init__(model, pca_baseline)
        if getattr(model, "variational", False):
            raise ConfigError(
                "Autoencoder got a variational architecture (its encoder returns mean and log-variance): "
                "set model.init_args.variational: false, or use the VAE task"
            )
        if reconstruction_loss not in ("mse", "bce"):
            raise ConfigError(f"reconstruction_loss must be 'mse' or 'bce', got {reconstruction_loss!r}")
        if noise not in ("gaussian", "masking"):
            raise ConfigError(f"noise must be 'gaussian' or 'masking', got {noise!r}")
        if noise_level < 0 or (noise == "masking" and noise_level >= 1):
            raise ConfigError(
                f"noise_level must be >= 0 (and < 1 for masking, a drop probability), got {noise_level}"
            )
        self.save_hyperparameters(ignore=["model"])
        self.reconstruction_loss, self.noise, self.noise_level = reconstruction_loss, noise, noise_level

    def corrupt(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The denoising autoencoder's input: ``x`` corrupted by the configured noise (``x`` if none)."""
        if self.noise_level == 0:
            return x
        if self.noise == "gaussian":
            return (x + self.noise_level * _normal(x, tuple(x.shape), generator)).clamp(0.0, 1.0)
        keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= self.noise_level
        return x * keep

    def objective(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.decoder(self.encode(self.corrupt(x, generator)))
        if self.reconstruction_loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, x), {}
        return F.mse_loss(torch.sigmoid(logits), x), {}


class VAE(_ReconstructionTask):
    """The variational autoencoder (Kingma & Welling 2014): Gaussian encoder, reparameterisation.

    The objective per image is ``-E_q log p(x|z) + w * KL(q(z|x) || N(0, I))`` in nats, averaged
    over the batch, with the KL weight ``w = beta * min(1, step / kl_warmup_steps)`` (beta-VAE,
    KL warm-up). ``nelbo_nats`` is the true negative ELBO (``w = 1``): an upper bound on
    ``-log p(x)``. With a Bernoulli decoder on grey pixels it is the "BCE sum + KL" of
    pytorch/examples (a bound for binarised data; on grey levels a cross-entropy, not a likelihood).

    Args:
        model: architecture built with ``variational=True``.
        likelihood: decoder ``p(x|z)``: ``bernoulli`` (logits) or ``gaussian`` (mean ``sigmoid(logits)``).
        beta: weight of the KL term after warm-up (1 is the ELBO).
        kl_warmup_steps: optimizer steps over which the KL weight rises linearly from 0 to ``beta``.
        decoder_std: the Gaussian decoder's pixel standard deviation; ``None`` learns one scalar.
        iw_samples: ``K`` of the importance-weighted bound logged on val/test (0: off).
        pca_baseline: log ``pca_mse`` beside ``recon_mse``.

    Example:
        >>> from tdl_lightning.models import MLPAutoencoder
        >>> vae = VAE(MLPAutoencoder(hidden_dims=(16,), latent_dim=2, variational=True), iw_samples=8)
        >>> vae.sample(3, seed=0).shape
        torch.Size([3, 1, 28, 28])
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str = "bernoulli",
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        decoder_std: float | None = None,
        iw_samples: int = 0,
        pca_baseline: bool = True,
    ) -> None:
        super().__init__(model, pca_baseline)
        if not getattr(model, "variational", False):
            raise ConfigError(
                f"VAE needs a Gaussian encoder (mean and log-variance), and {type(model).__name__} was "
                "built without one: set model.init_args.variational: true"
            )
        if likelihood not in ("bernoulli", "gaussian"):
            raise ConfigError(f"likelihood must be 'bernoulli' or 'gaussian', got {likelihood!r}")
        if beta < 0 or kl_warmup_steps < 0 or iw_samples < 0:
            raise ConfigError(
                "beta, kl_warmup_steps and iw_samples must be >= 0, got "
                f"{beta}, {kl_warmup_steps}, {iw_samples}"
            )
        if decoder_std is not None and decoder_std <= 0:
            raise ConfigError(f"decoder_std must be > 0 (or null to learn it), got {decoder_std}")
        self.save_hyperparameters(ignore=["model"])
        self.likelihood, self.beta, self.kl_warmup_steps = likelihood, beta, kl_warmup_steps
        self.iw_samples = iw_samples
        self.log_decoder_std: Tensor | nn.Parameter
        if likelihood == "gaussian" and decoder_std is None:
            self.log_decoder_std = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("log_decoder_std", torch.tensor(math.log(decoder_std or 1.0)))

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of ``q(z|x)``, each ``(n, latent_dim)``."""
        code = self.encoder(x)
        return code[:, : self.latent_dim], code[:, self.latent_dim :]

    def log_likelihood(self, x: Tensor, logits: Tensor) -> Tensor:
        """``log p(x|z)`` per image (summed over pixels) from the decoder's ``logits``.

        Example:
            >>> from tdl_lightning.models import MLPAutoencoder
            >>> vae = VAE(MLPAutoencoder(input_shape=(1,), hidden_dims=(2,), latent_dim=1, variational=True))
            >>> round(float(vae.log_likelihood(torch.ones(1, 1), torch.zeros(1, 1))), 4)  # log 1/2
            -0.6931
        """
        if self.likelihood == "bernoulli":
            nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
            return -nll.flatten(1).sum(1)
        std = self.log_decoder_std.exp()
        log_density = torch.distributions.Normal(torch.sigmoid(logits), std).log_prob(x)
        return log_density.flatten(1).sum(1)

    def kl_weight(self) -> float:
        """The KL term's weight at the current step (``beta`` after the warm-up)."""
        if self.kl_warmup_steps == 0:
            return self.beta
        return self.beta * min(1.0, self.global_step / self.kl_warmup_steps)

    def elbo_terms(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``(-log p(x|z), KL(q(z|x) || p(z)))`` per image, ``z`` drawn once by reparameterisation.

        Their sum is a one-sample estimate of the negative ELBO, an upper bound on ``-log p(x)``.
        """
        mean, log_var = self.posterior(x)
        z = mean + (0.5 * log_var).exp() * _normal(mean, tuple(mean.shape), generator)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(1)
        return -self.log_likelihood(x, self.decoder(z)), kl

    def iw_nelbo(self, x: Tensor, samples: int, generator: torch.Generator | None = None) -> Tensor:
        """The importance-weighted bound on ``-log p(x)`` with ``samples`` draws, per image (nats).

        ``-log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x)``; it tightens as ``K`` grows and equals the
        negative ELBO in expectation at ``K = 1`` (Burda et al. 2016).
        """
        mean, log_var = self.posterior(x)
        std = (0.5 * log_var).exp()
        z = mean + std * _normal(mean, (samples, *mean.shape), generator)
        standard = torch.distributions.Normal(0.0, 1.0)
        log_q = torch.distributions.Normal(mean, std).log_prob(z).sum(-1)
        log_prior = standard.log_prob(z).sum(-1)
        repeated = x.expand(samples, *x.shape).reshape(-1, *x.shape[1:])
        log_lik = self.log_likelihood(repeated, self.decoder(z.reshape(-1, self.latent_dim))).view(
            samples, -1
        )
        return -(torch.logsumexp(log_lik + log_prior - log_q, dim=0) - math.log(samples))

    def objective(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, dict[str, Tensor]]:
        recon, kl = self.elbo_terms(x, generator)
        weight = self.kl_weight()
        parts = {"nelbo_nats": (recon + kl).mean(), "recon_nats": recon.mean(), "kl_nats": kl.mean()}
        if self.kl_warmup_steps or self.beta != 1.0:
            parts["kl_weight"] = torch.tensor(weight, device=x.device)
        return (recon + weight * kl).mean(), parts

    def eval_metrics(self, x: Tensor) -> dict[str, Tensor]:
        metrics = super().eval_metrics(x)
        if self.iw_samples:
            metrics["iw_nelbo_nats"] = self.iw_nelbo(x, self.iw_samples, fixed_generator(x, seed=1)).mean()
        return metrics

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        """``n`` images decoded (means) from ``z ~ N(0, I)``; ``seed`` fixes the noise.

        Example:
            >>> from tdl_lightning.models import MLPAutoencoder
            >>> vae = VAE(MLPAutoencoder(hidden_dims=(8,), latent_dim=2, variational=True))
            >>> torch.equal(vae.sample(2, seed=1), vae.sample(2, seed=1))
            True
        """
        reference = self.log_decoder_std
        generator = None if seed is None else fixed_generator(reference, seed)
        return self.decode(_normal(reference, (n, self.latent_dim), generator))

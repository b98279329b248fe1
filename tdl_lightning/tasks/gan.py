"""Generative adversarial networks with manual optimisation (Lightning 2 has no ``optimizer_idx``).

Each training batch makes one discriminator step; every ``n_critic``-th batch is followed by
``generator_steps`` generator steps. Losses: the non-saturating GAN of Goodfellow et al. (2014)
(discriminator: binary cross-entropy on real vs fake; generator: ``-log D(G(z))``), or WGAN-GP
(Gulrajani et al. 2017: critic ``E D(fake) - E D(real) + gp_weight * (|grad D(x_hat)| - 1)^2``,
generator ``-E D(G(z))``). ``trainer.global_step`` counts the steps of both optimizers.

What plugins and pictures see:

- ``loss(batch)``: the discriminator's loss on ``batch`` against fakes from noise with a fixed seed,
  a deterministic function of *both* networks' parameters (for the non-saturating loss it is the
  negative value function ``-V(D, G)``; for WGAN-GP the critic loss with its penalty). It is what
  ``train/loss`` logs; ``train/g_loss`` logs the generator's loss.
- ``pl_module(z)`` with ``z`` of shape ``(n, latent_dim)`` is the generator (a generator Jacobian);
  with images it is the discriminator's logit. ``generator`` and ``discriminator`` are submodules.
- ``sample(n, seed)``: generated images in ``[0, 1]``.

Metrics on val/test (no download): ``fid``, the Frechet distance between LeNet-5 features of
``metric_samples`` generated images and of the real val/test split, beside ``fid_floor``, the same
distance for as many real training images (the real-vs-real floor); ``kid`` and ``kid_floor``, the
same pairs by the kernel distance, unbiased at any sample size; ``classifier_score`` of the
generated images beside ``classifier_score_real`` of the real split. The LeNet-5 is trained once on
the training split and cached (:func:`~tdl_lightning.tasks.metrics.lenet_feature_extractor`).

Example:
    >>> import torch
    >>> from tdl_lightning.models import MLPGAN
    >>> gan = GAN(MLPGAN(latent_dim=8, hidden_dims=(16,)))
    >>> gan(torch.zeros(2, 8)).shape, gan(torch.rand(2, 1, 28, 28)).shape
    (torch.Size([2, 1, 28, 28]), torch.Size([2, 1]))
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor, nn
from typing_extensions import override

from tdl_lightning.errors import ConfigError
from tdl_lightning.tasks.autoencoder import fixed_generator
from tdl_lightning.tasks.base import Task
from tdl_lightning.tasks.metrics import (
    check_unit_interval,
    classifier_score,
    frechet_distance,
    kernel_distance,
    lenet_feature_extractor,
    lenet_features,
    training_split,
)

__all__ = ["GAN"]

LOSSES = ("non_saturating", "wgan_gp")


class GAN(Task):
    """A GAN task on images in ``[0, 1]``: two Adam optimizers, stepped by hand.

    Args:
        model: architecture with ``generator``, ``discriminator`` and ``latent_dim`` (``MLPGAN``, ``DCGAN``).
        loss_type: ``non_saturating`` or ``wgan_gp``.
        n_critic: discriminator steps (one per batch) per generator turn; 5 is usual for WGAN-GP.
        generator_steps: generator steps per generator turn.
        lr_generator: Adam learning rate of the generator.
        lr_discriminator: Adam learning rate of the discriminator.
        betas: Adam's betas for both (``(0.5, 0.999)`` for DCGAN, ``(0.0, 0.9)`` for WGAN-GP).
        gp_weight: weight of WGAN-GP's gradient penalty.
        metrics: compute ``fid``/``classifier_score`` on val/test (trains or loads the LeNet-5).
        metric_samples: generated (and real training) images per Frechet distance.
        feature_cache_dir: where the LeNet-5 is cached; ``None``: the run directory.
        feature_epochs: training epochs of the LeNet-5.
        noise_seed: seed of the fixed noise used by ``loss``, the metrics and the sample grids.

    The config's single ``optimizer:`` key cannot drive two optimizers: leave it out and set the
    learning rates here.

    Example:
        >>> from tdl_lightning.models import DCGAN
        >>> gan = GAN(DCGAN(latent_dim=4, channels=(4, 8), discriminator_norm="none"), loss_type="wgan_gp")
        >>> x = torch.rand(3, 1, 28, 28)
        >>> bool(gan.loss((x,)) == gan.loss((x,)))
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_type: str = "non_saturating",
        n_critic: int = 1,
        generator_steps: int = 1,
        lr_generator: float = 2e-4,
        lr_discriminator: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        gp_weight: float = 10.0,
        metrics: bool = True,
        metric_samples: int = 1000,
        feature_cache_dir: str | None = None,
        feature_epochs: int = 4,
        noise_seed: int = 0,
    ) -> None:
        super().__init__(model)
        missing = [a for a in ("generator", "discriminator", "latent_dim") if not hasattr(model, a)]
        if missing:
            raise ConfigError(
                f"GAN needs an architecture with a generator, a discriminator and a latent_dim; "
                f"{type(model).__name__} lacks {missing}: use MLPGAN or DCGAN"
            )
        if loss_type not in LOSSES:
            raise ConfigError(f"loss_type must be one of {list(LOSSES)}, got {loss_type!r}")
        if loss_type == "wgan_gp" and any(
            isinstance(m, nn.BatchNorm2d) for m in self.discriminator.modules()
        ):
            raise ConfigError(
                "WGAN-GP's gradient penalty is per sample, and BatchNorm in the critic mixes samples: "
                "set model.init_args.discriminator_norm: layer (or none)"
            )
        for name, value in (("n_critic", n_critic), ("generator_steps", generator_steps)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if lr_generator <= 0 or lr_discriminator <= 0:
            raise ConfigError(f"learning rates must be > 0, got {lr_generator} and {lr_discriminator}")
        if metric_samples < 2:
            raise ConfigError(f"metric_samples must be >= 2 (a covariance needs two), got {metric_samples}")
        self.save_hyperparameters(ignore=["model"])
        self.automatic_optimization = False
        self.latent_dim = int(cast(int, model.latent_dim))
        self.lr_generator, self.lr_discriminator = lr_generator, lr_discriminator
        self.betas = cast(tuple[float, float], tuple(betas))  # a YAML list becomes a tuple
        self.compute_metrics, self.metric_samples = metrics, metric_samples
        self.feature_cache_dir, self.feature_epochs = feature_cache_dir, feature_epochs
        self.loss_type, self.n_critic, self.generator_steps = loss_type, n_critic, generator_steps
        self.gp_weight, self.noise_seed = gp_weight, noise_seed
        self._extractor: list[nn.Module] = []  # a list keeps the LeNet-5 out of parameters and state_dict
        self._reference: dict[str, Tensor] = {}
        self._eval_outputs: list[tuple[Tensor, Tensor]] = []
        self._checked_pixels = False

    @property
    def generator(self) -> nn.Module:
        """The generator ``z -> image``: the map a generator Jacobian probes."""
        return cast(nn.Module, self.model.generator)

    @property
    def discriminator(self) -> nn.Module:
        """The discriminator (critic for WGAN-GP): ``image -> logit``."""
        return cast(nn.Module, self.model.discriminator)

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` draws of ``z ~ N(0, I)`` on the module's device."""
        return torch.randn(n, self.latent_dim, generator=generator, device=self.device)

    def sample(self, n: int, seed: int | None = None) -> Tensor:
        """``n`` generated images; ``seed`` fixes the noise (the fixed-noise grid).

        Example:
            >>> from tdl_lightning.models import MLPGAN
            >>> gan = GAN(MLPGAN(latent_dim=4, hidden_dims=(8,)))
            >>> torch.equal(gan.sample(2, seed=3), gan.sample(2, seed=3))
            True
        """
        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
        return self.generator(self.noise(n, generator))

    @override
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2 and x.shape[1] == self.latent_dim:
            return self.generator(x)
        return self.discriminator(x)

    def gradient_penalty(
        self, real: Tensor, fake: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """WGAN-GP's ``E (|grad_x D(x_hat)| - 1)^2`` on random mixtures ``x_hat`` of real and fake."""
        shape = (len(real),) + (1,) * (real.dim() - 1)
        mix = torch.rand(shape, generator=generator, device=real.device, dtype=real.dtype)
        x_hat = (mix * real.detach() + (1 - mix) * fake.detach()).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminator(x_hat).sum(), x_hat, create_graph=True)
        return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()

    def discriminator_loss(
        self, real: Tensor, fake: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """The discriminator's (critic's) loss on a real and a fake batch.

        Under inference mode (Lightning's validation) WGAN-GP's penalty, which needs gradients, is left out.
        """
        d_real, d_fake = self.discriminator(real), self.discriminator(fake)
        if self.loss_type == "non_saturating":
            return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        loss = d_fake.mean() - d_real.mean()
        if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
            return loss
        return loss + self.gp_weight * self.gradient_penalty(real, fake, generator)

    def generator_loss(self, fake: Tensor) -> Tensor:
        """The generator's loss: ``-E log D(G(z))`` (non-saturating) or ``-E D(G(z))`` (WGAN)."""
        d_fake = self.discriminator(fake)
        return F.softplus(-d_fake).mean() if self.loss_type == "non_saturating" else -d_fake.mean()

    def loss(self, batch: Any) -> Tensor:
        """The discriminator's loss on ``batch = (images, ...)`` with fakes from fixed-seed noise.

        Example:
            >>> from tdl_lightning.models import MLPGAN
            >>> gan = GAN(MLPGAN(latent_dim=4, hidden_dims=(8,)))
            >>> gan.loss((torch.rand(5, 1, 28, 28),)).shape
            torch.Size([])
        """
        real = batch[0]
        generator = fixed_generator(real, self.noise_seed)
        return self.discriminator_loss(real, self.generator(self.noise(len(real), generator)), generator)

    @override
    def configure_optimizers(self) -> Any:
        return [
            torch.optim.Adam(self.generator.parameters(), lr=self.lr_generator, betas=self.betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.lr_discriminator, betas=self.betas),
        ]

    def _two_optimizers(self) -> tuple[Any, Any]:
        return self.optimizer_pair(
            "GAN trains a generator and a discriminator with two optimizers (set "
            "model.init_args.lr_generator / lr_discriminator / betas)"
        )

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        real = batch[0]
        if not self._checked_pixels:
            check_unit_interval(real, "GAN")
            self._checked_pixels = True
        opt_g, opt_d = self._two_optimizers()
        n = len(real)

        self.toggle_optimizer(opt_d)
        d_loss = self.discriminator_loss(real, self.generator(self.noise(n)).detach())
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        self.log("train/loss", d_loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)

        if (batch_idx + 1) % self.n_critic == 0:
            self.toggle_optimizer(opt_g)
            for _ in range(self.generator_steps):
                g_loss = self.generator_loss(self.generator(self.noise(n)))
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(g_loss)
                opt_g.step()
            self.untoggle_optimizer(opt_g)
            self.log("train/g_loss", g_loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        return d_loss

    @override
    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy if self._trainer is not None else None
        # each of the two losses leaves the other network's weights unused, which DDP's reducer
        # refuses (a RuntimeError at the first backward) unless it is told to look for them
        ddp_kwargs = getattr(strategy, "_ddp_kwargs", None) or {}
        if (
            stage == "fit"
            and isinstance(strategy, DDPStrategy)
            and not ddp_kwargs.get("find_unused_parameters")
        ):
            raise ConfigError(
                "GAN steps its generator and discriminator on separate losses, so each backward leaves "
                "the other network's weights unused, which DDP refuses by default: use --trainer.strategy "
                "ddp_find_unused_parameters_true (or ddp_spawn_find_unused_parameters_true)"
            )

    # ------------------------------------------------------------------ metrics
    @override
    def on_fit_start(self) -> None:
        self._two_optimizers()
        self._prepare_metrics()

    @override
    def on_test_start(self) -> None:
        self._prepare_metrics()

    def _prepare_metrics(self) -> None:
        if not self.compute_metrics or self._extractor:
            return
        data = training_split(self.trainer)
        if data is None:
            raise ConfigError(
                "GAN metrics need the training split to train the LeNet-5 feature extractor and the "
                "real-vs-real floor: use a data module with training data, or set "
                "model.init_args.metrics: false"
            )
        images, labels = data
        check_unit_interval(images, "GAN")
        cache = self.feature_cache_dir or self.trainer.log_dir or self.trainer.default_root_dir
        extractor = self._feature_extractor(images, labels, cache)
        self._extractor = [extractor.to(self.device)]
        subset = images[: self.metric_samples].to(self.device)
        self._reference["train_features"] = lenet_features(self._extractor[0], subset)[0]

    def _feature_extractor(self, images: Tensor, labels: Tensor, cache: str) -> nn.Module:
        """The LeNet-5 of the metrics. Under DDP global rank zero trains (or loads) it into the cache
        while the other ranks wait at a barrier, then load it: trained once, not once per rank. The
        cache must be on a file system every rank sees (the run directory is)."""

        def make() -> nn.Module:
            with torch.inference_mode(False), torch.enable_grad():
                return lenet_feature_extractor(
                    images.cpu(),
                    labels.cpu(),
                    cache,
                    epochs=self.feature_epochs,
                    seed=self.noise_seed,
                )

        trainer = self.trainer
        if trainer.world_size == 1:
            return make()
        extractor, error = None, None
        if trainer.is_global_zero:
            try:
                extractor = make()
            except Exception as err:  # the others must not wait at the barrier for ever
                error = f"{type(err).__name__}: {err}"
        trainer.strategy.barrier("gan_feature_extractor")
        error = trainer.strategy.broadcast(error)
        if error is not None:
            raise RuntimeError(f"GAN: training the LeNet-5 feature extractor failed on rank 0: {error}")
        return extractor if extractor is not None else make()  # found in the cache rank zero filled

    def _eval_step(self, batch: Any, stage: str) -> Tensor:
        real = batch[0]
        loss = self.loss(batch)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(real))
        if self._extractor and not self.trainer.sanity_checking:
            self._eval_outputs.append(lenet_features(self._extractor[0], real))
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    @override
    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_sample_metrics("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_sample_metrics("test")

    def _log_sample_metrics(self, stage: str) -> None:
        if not self._eval_outputs:
            return
        # all_gather of a tensor is a tensor (its type covers dicts and sequences of tensors too)
        features = cast(Tensor, self.all_gather(torch.cat([f for f, _ in self._eval_outputs])))
        logits = cast(Tensor, self.all_gather(torch.cat([lg for _, lg in self._eval_outputs])))
        self._eval_outputs.clear()
        features, logits = features.reshape(-1, features.shape[-1]), logits.reshape(-1, logits.shape[-1])
        train_features = self._reference["train_features"]
        fake_features, fake_logits = lenet_features(
            self._extractor[0], self.sample(len(train_features), seed=self.noise_seed + 1)
        )
        metrics = {
            "fid": frechet_distance(fake_features, features),
            "fid_floor": frechet_distance(train_features, features),
            "kid": kernel_distance(fake_features, features),
            "kid_floor": kernel_distance(train_features, features),
            "classifier_score": classifier_score(fake_logits),
            "classifier_score_real": classifier_score(logits),
        }
        for key, value in metrics.items():
            self.log(f"{stage}/{key}", value, prog_bar=key == "fid")

    @override
    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.sample(len(batch[0]))

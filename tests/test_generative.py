"""Autoencoder, VAE and GAN tasks: CLI runs, the ELBO as a true bound, the metrics, the errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import PIL.Image
import pytest
import torch
from torch import nn

from plugins.pictures import LatentInterpolation, LatentScatter, ReconstructionGrid, SampleGrid
from tdl_lightning.cli import main
from tdl_lightning.data import MNIST5k
from tdl_lightning.errors import ConfigError
from tdl_lightning.models import DCGAN, MLPGAN, ConvAutoencoder, MLPAutoencoder
from tdl_lightning.tasks import GAN, VAE, Autoencoder
from tdl_lightning.tasks.metrics import (
    PCABaseline,
    frechet_distance,
    kernel_distance,
    lenet_feature_extractor,
    lenet_features,
)
from tests.harness import assert_same_weights

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
QUICK = [
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_checkpointing",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.log_every_n_steps",
    "1",
]


@pytest.fixture(scope="module")
def mnist() -> MNIST5k:
    data = MNIST5k(normalize=False)
    data.setup()
    return data


def _run(experiment: str, *overrides: str, wandb: bool = False) -> tuple[dict, Path]:
    main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / experiment),
            *QUICK,
            "--run.wandb",
            str(wandb).lower(),
            *overrides,
        ]
    )
    (summary_path,) = Path("runs").glob("*/*/summary.json")
    summary = json.loads(summary_path.read_text())
    return summary["metrics"], summary_path.parent


# ----------------------------------------------------------------------------- the real CLI
def test_autoencoder_trains_through_the_cli(in_tmp):
    """Denoising conv autoencoder, a few steps: losses, the PCA baseline and the pictures appear."""
    metrics, run_dir = _run(
        "autoencoder.yaml",
        "--model.init_args.noise_level",
        "0.3",
        "--model.init_args.model",
        "ConvAutoencoder",
        "--model.init_args.model.init_args.channels",
        "[4, 8]",
        "--model.init_args.model.init_args.latent_dim",
        "8",
    )
    for key in ("train/loss", "val/loss", "val/recon_mse", "val/pca_mse"):
        assert math.isfinite(metrics[key]), key
    assert 0 < metrics["val/pca_mse"] < 0.1  # PCA-8 on MNIST: about 0.04 per pixel
    for picture in ("reconstructions", "latent_scatter", "interpolations"):
        assert list((run_dir / "plugins" / picture).glob("*.png")), picture


def test_vae_trains_through_the_cli(in_tmp):
    """The VAE logs the negative ELBO and its parts, the IW bound, and draws samples (to W&B too)."""
    metrics, run_dir = _run("vae.yaml", "--model.init_args.iw_samples", "8", wandb=True)
    assert metrics["val/nelbo_nats"] == pytest.approx(
        metrics["val/recon_nats"] + metrics["val/kl_nats"], rel=1e-4
    )
    assert metrics["val/iw_nelbo_nats"] <= metrics["val/nelbo_nats"] + 1.0
    assert 100 < metrics["val/nelbo_nats"] < 600  # an untrained 784-pixel Bernoulli decoder: ~543 nats
    assert list((run_dir / "plugins" / "samples").glob("strip_step*.png"))
    media = list(run_dir.glob("wandb/offline-run-*/files/media/images/**/*.png"))
    assert any("samples" in p.parent.name for p in media), media


def test_gan_trains_through_the_cli(in_tmp):
    """DCGAN, a few steps of both players: FD and classifier score beside the real floor; a grid strip."""
    metrics, run_dir = _run(
        "gan.yaml",
        "--model.init_args.metric_samples",
        "200",
        "--model.init_args.feature_epochs",
        "1",
        "--model.init_args.model.init_args.channels",
        "[8, 16]",
    )
    assert metrics["val/fid"] > metrics["val/fid_floor"] >= 0  # 3 steps cannot fool LeNet-5
    assert metrics["val/kid"] > metrics["val/kid_floor"]
    assert 1 <= metrics["val/classifier_score"] < metrics["val/classifier_score_real"] <= 10
    assert list(Path("runs/feature_extractors").glob("lenet_features_*.pt"))  # cached for the next run
    assert list((run_dir / "plugins" / "samples").glob("strip_step*.png"))


def test_wgan_gp_trains_with_n_critic(in_tmp):
    """WGAN-GP on the MLP GAN: the generator steps only every n_critic-th batch."""
    overrides = {"loss_type": "wgan_gp", "n_critic": "3", "metrics": "false", "model": "MLPGAN"}
    args = [f"--model.init_args.{key}={value}" for key, value in overrides.items()]
    _run("gan.yaml", "--trainer.callbacks=[]", *args, "--model.init_args.model.init_args.hidden_dims=[16]")
    (summary,) = Path("runs").glob("*/*/summary.json")
    assert json.loads(summary.read_text())["global_step"] == 3 + 1  # 3 critic steps, 1 generator step


def test_gan_refuses_a_single_optimizer_from_the_config(in_tmp, capsys):
    with pytest.raises(SystemExit):
        _run("gan.yaml", "--optimizer", "Adam")
    assert "remove `optimizer:`" in capsys.readouterr().err


def test_pictures_leave_training_untouched_and_keep_their_strip(mnist, fit_collect, tmp_path):
    """All four pictures of a VAE, every epoch of 2 epochs of 2 steps: the weights are bitwise
    those of the fit without them, each picture lands in the run's plugin folder, the sample
    strip has one row of samples per probe (the one at the end repeats no step), and it survives
    the checkpoint."""

    def vae() -> VAE:
        return VAE(MLPAutoencoder(hidden_dims=(8,), latent_dim=3, variational=True))

    fit = dict(max_steps=-1, max_epochs=2, limit_train_batches=2)
    plain = fit_collect(vae, lambda: mnist, [], **fit)
    samples = SampleGrid(every_n_epochs=1, num_images=6, strip_width=4)
    pictures = [
        ReconstructionGrid(num_images=5),
        LatentScatter(every_n_epochs=1, num_images=40),
        LatentInterpolation(every_n_epochs=1, num_pairs=2, steps=3),
        samples,
    ]
    drawn = fit_collect(vae, lambda: mnist, pictures, default_root_dir=str(tmp_path), **fit)
    assert_same_weights(plain, drawn)
    out = tmp_path / "plugins"
    names = {"reconstructions": "grid", "latent_scatter": "scatter", "interpolations": "grid"}
    for folder, image in names.items():
        assert sorted(p.name for p in (out / folder).glob("*.png")) == [
            f"{image}_step0000002.png",
            f"{image}_step0000004.png",
        ]
    assert len(samples.strip) == 2 and samples.strip[0].shape == (30, 117)  # 28 + 2 by 4 * 29 + 1
    strip = np.asarray(PIL.Image.open(out / "samples" / "strip_step0000004.png"))
    assert strip.shape == (60, 117) and strip[0].min() == 255  # two rows, white border
    restored = SampleGrid()
    restored.load_state_dict(samples.state_dict())
    assert all(np.array_equal(a, b) for a, b in zip(restored.strip, samples.strip, strict=True))
    grid = np.asarray(PIL.Image.open(out / "reconstructions" / "grid_step0000004.png"))
    assert grid.shape == (59, 146)  # two rows (images, reconstructions) of five


# ----------------------------------------------------------------------------- the ELBO is a bound
def test_vae_elbo_is_a_true_bound_on_log_likelihood():
    """A VAE with a 1-d latent on 6 binary pixels: log p(x) by quadrature over z, against the
    ELBO (20,000 reparameterised draws) and the importance-weighted bound (K = 4,000).

    Expected: -ELBO >= -log p(x) up to 4 Monte-Carlo standard errors, -ELBO - (-log p(x)) > 0.01
    (a real gap), and the IW bound between them, within 0.02 nats of -log p(x).
    """
    torch.manual_seed(0)
    vae = VAE(MLPAutoencoder(input_shape=(6,), hidden_dims=(16,), latent_dim=1, variational=True)).double()
    x = torch.tensor(
        [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 0, 1, 0, 1, 0], [1, 1, 1, 1, 1, 1]]
    ).double()
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(100):  # a trained model, so that p(x) is far from uniform
        optimizer.zero_grad()
        vae.objective(x, None)[0].backward()
        optimizer.step()

    with torch.no_grad():
        z = torch.linspace(-12, 12, 24001, dtype=torch.float64).unsqueeze(1)
        log_lik = torch.stack([vae.log_likelihood(xi.expand(len(z), 6), vae.decoder(z)) for xi in x])
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z[:, 0])
        nll = -(torch.logsumexp(log_lik + log_prior, dim=1) + math.log(float(z[1] - z[0])))

        draws = 20_000
        recon, kl = vae.elbo_terms(x.repeat(draws, 1))
        nelbo = (recon + kl).view(draws, len(x))
        stderr = nelbo.std(0) / math.sqrt(draws)
        iw = vae.iw_nelbo(x, samples=4000)

    assert torch.all(nelbo.mean(0) + 4 * stderr >= nll), (nelbo.mean(0), nll)
    assert torch.all(nelbo.mean(0) - nll > 0.01)
    assert torch.all(iw >= nll - 0.02) and torch.all(iw <= nelbo.mean(0) + 4 * stderr)
    assert torch.allclose(iw, nll, atol=0.02), (iw, nll)


# ----------------------------------------------------------------------------- metrics
def test_frechet_distance_is_zero_for_identical_sets_and_matches_torchmetrics(mnist):
    """On LeNet-5 features of real digits: FD(a, a) ~ 0 (|FD| < 1e-6), FD(train, test) > 0, and
    the same number as torchmetrics' FID with the LeNet-5 as its custom feature module (rel 1e-3).
    The LeNet-5 is barely trained (one epoch on 1,000 digits): the identities hold for any features."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    x, y = mnist.splits["train"]
    extractor = lenet_feature_extractor(x[:1000], y[:1000], epochs=1)
    train, _ = lenet_features(extractor, x[:500])
    test, _ = lenet_features(extractor, mnist.splits["test"][0])
    assert abs(frechet_distance(train, train)) < 1e-6
    floor = frechet_distance(train, test)
    assert floor > 1e-3

    class Features(nn.Module):
        num_features = 84

        def forward(self, images):
            return lenet_features(extractor, images)[0]

    fid = FrechetInceptionDistance(feature=Features(), normalize=True)
    fid.update(x[:500], real=True)
    fid.update(mnist.splits["test"][0], real=False)
    assert float(fid.compute()) == pytest.approx(floor, rel=1e-3)


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    """N(0, I) vs N(m, 4 I) in 3-d: FD = |m|^2 + 3 (1 + 4 - 2 * 2) = |m|^2 + 3, within 3%."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50_000, 3, generator=g)
    b = 2 * torch.randn(50_000, 3, generator=g) + torch.tensor([1.0, 2.0, 0.0])
    assert frechet_distance(a, b) == pytest.approx(5.0 + 3.0, rel=0.03)


def test_kernel_distance_is_the_unbiased_mmd_of_the_cubic_kernel():
    """Equal set sizes (every subset is the whole set): KID is the unbiased MMD^2 of
    k(x, y) = (x.y / d + 1)^3 written out (rel 1e-9); over 20 pairs of sets of one distribution its
    mean is 0 within 3 standard errors (unbiased), and a shift of 1 in 3-d gives a clearly larger value."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, 3, generator=g).double(), torch.randn(40, 3, generator=g).double() + 0.5
    k_aa, k_bb, k_ab = ((x @ y.T / 3 + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    off_diagonal = (k_aa.sum() - k_aa.trace() + k_bb.sum() - k_bb.trace()) / (40 * 39)
    assert kernel_distance(a, b) == pytest.approx(float(off_diagonal - 2 * k_ab.mean()), rel=1e-9)

    def normal(shift: float = 0.0) -> torch.Tensor:
        return torch.randn(100, 3, generator=g) + shift

    same = torch.tensor([kernel_distance(normal(), normal()) for _ in range(20)])
    assert abs(float(same.mean())) < 3 * float(same.std()) / math.sqrt(20)
    assert kernel_distance(normal(), normal(1.0)) > 10 * float(same.std())


def test_pca_baseline_is_the_best_linear_reconstruction(mnist):
    x = mnist.splits["train"][0]
    errors = [float(PCABaseline(k).fit(x).mse(mnist.splits["test"][0])) for k in (2, 8, 32)]
    assert errors[0] > errors[1] > errors[2] > 0
    assert 0.01 < errors[2] < 0.03  # PCA-32 on MNIST test digits: about 0.018 per pixel


@pytest.mark.slow
def test_autoencoder_beats_pca_at_the_same_latent_size(mnist, tiny_trainer_kwargs):
    """The latent-32 MLP autoencoder of experiments/autoencoder.yaml after its 30 epochs on MNIST5k
    (1,890 steps): test recon MSE below PCA-32's (0.0172). After 10 epochs it is still above
    (about 0.02 on val), so this needs the full run and is marked slow."""
    L.seed_everything(0, verbose=False)
    task = Autoencoder(MLPAutoencoder(hidden_dims=(256,), latent_dim=32), reconstruction_loss="bce")
    trainer = L.Trainer(**{**tiny_trainer_kwargs, "max_steps": -1, "max_epochs": 30, "limit_val_batches": 0})
    trainer.fit(task, mnist)
    (result,) = trainer.test(task, mnist, verbose=False)
    assert result["test/recon_mse"] < result["test/pca_mse"], result


# ----------------------------------------------------------------------------- protocol and errors
def test_forward_is_decoder_on_codes_and_generator_on_noise():
    """``pl_module(z)`` is the decoder (generator) on codes (noise): its Jacobian is the decoder's."""
    ae = Autoencoder(MLPAutoencoder(hidden_dims=(16,), latent_dim=2))
    z = torch.randn(1, 2)
    jacobian = torch.autograd.functional.jacobian(lambda v: ae(v).flatten(), z)
    sigmoid_grad = ae(z) * (1 - ae(z))
    expected = sigmoid_grad.flatten().unsqueeze(1) * torch.autograd.functional.jacobian(
        lambda v: ae.decoder(v).flatten(), z
    ).squeeze(1)
    assert torch.allclose(jacobian.squeeze(1), expected, atol=1e-6)
    gan = GAN(DCGAN(latent_dim=3, channels=(4, 8)))
    assert torch.equal(gan.eval()(torch.ones(2, 3)), gan.generator(torch.ones(2, 3)))


def test_hessian_plugin_probes_the_vae_and_gan_losses():
    """HessianEigenvalues' pure function on ``loss(batch)``: deterministic, so Lanczos converges."""
    hessian = pytest.importorskip("plugins.hessian")
    from plugins.base import module_loss_fn

    x = torch.rand(16, 1, 28, 28)
    for task in (
        VAE(MLPAutoencoder(hidden_dims=(8,), latent_dim=2, variational=True)),
        GAN(MLPGAN(latent_dim=2, hidden_dims=(8,))),
    ):
        values = hessian.hessian_eigenvalues(task, module_loss_fn, (x,), k=1, max_iter=40, tol=1e-3)
        assert values.shape == (1,) and torch.isfinite(values).all()


def test_misconfigurations_get_clear_errors():
    with pytest.raises(ConfigError, match="variational: true"):
        VAE(MLPAutoencoder(latent_dim=2))
    with pytest.raises(ConfigError, match="use the VAE task"):
        Autoencoder(MLPAutoencoder(latent_dim=2, variational=True))
    with pytest.raises(ConfigError, match="discriminator_norm: layer"):
        GAN(DCGAN(channels=(4, 8)), loss_type="wgan_gp")
    with pytest.raises(ConfigError, match="multiple of 8"):
        ConvAutoencoder(input_size=28, channels=(4, 8, 16))
    task = Autoencoder(MLPAutoencoder(hidden_dims=(8,), latent_dim=2))
    standardised = (torch.rand(4, 1, 28, 28) - 0.1307) / 0.3081
    with pytest.raises(ConfigError, match="normalize: false"):
        task.training_step((standardised, torch.zeros(4)), 0)

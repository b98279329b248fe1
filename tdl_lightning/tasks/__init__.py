"""``LightningModule``s: the training objective of each model family.

Every task has ``loss(batch) -> Tensor``, the one objective used by ``training_step`` and by the
diagnostic plugins.

Example:
    >>> from tdl_lightning.tasks import Classifier
    >>> from tdl_lightning.models import DeepMLP
    >>> Classifier(DeepMLP(input_dim=784, output_dim=10)).num_classes
    10
"""

from tdl_lightning.tasks.autoencoder import VAE, Autoencoder
from tdl_lightning.tasks.base import Task
from tdl_lightning.tasks.classifier import Classifier
from tdl_lightning.tasks.gan import GAN
from tdl_lightning.tasks.pinn import PINN
from tdl_lightning.tasks.regressor import Regressor

__all__ = [
    "Autoencoder",
    "GAN",
    "VAE",
    "Classifier",
    "PINN",
    "Regressor",
    "Task",
]

"""Plain ``nn.Module`` architectures of the course, with their initialisation schemes.

Example:
    >>> from tdl_lightning.models import DeepMLP, LeNet5
    >>> LeNet5().fc3.out_features
    10
"""

from tdl_lightning.models.activations import ACTIVATIONS, activation_module
from tdl_lightning.models.autoencoder import AutoencoderNet, ConvAutoencoder, MLPAutoencoder
from tdl_lightning.models.gan import DCGAN, MLPGAN, GANNet
from tdl_lightning.models.lenet import LeNet5
from tdl_lightning.models.mlp import INITS, PARAMETERISATIONS, DeepMLP, ScaledLinear, init_linear
from tdl_lightning.models.sawtooth import Sawtooth, tent_map

__all__ = [
    "AutoencoderNet",
    "ConvAutoencoder",
    "DCGAN",
    "GANNet",
    "MLPAutoencoder",
    "MLPGAN",
    "ACTIVATIONS",
    "INITS",
    "DeepMLP",
    "LeNet5",
    "activation_module",
    "init_linear",
    "Sawtooth",
    "tent_map",
    "PARAMETERISATIONS",
    "ScaledLinear",
]

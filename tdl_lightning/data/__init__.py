"""``LightningDataModule``s: the bundled offline MNIST subset, torchvision sets, synthetic data.

Example:
    >>> from tdl_lightning.data import MNIST5k
    >>> MNIST5k().batch_size
    64
"""

from tdl_lightning.data.base import (
    OnDeviceLoader,
    SeededPermutation,
    TensorBatches,
    TensorDataModule,
    collate_batches,
    split_indices,
)
from tdl_lightning.data.information_bottleneck import IBTask, icosahedron_vertices, twelve_bit_task
from tdl_lightning.data.mnist5k import MNIST5k, mnist5k_path, read_mnist5k
from tdl_lightning.data.pde import PDECollocation, PDEProblem, make_problem
from tdl_lightning.data.sawtooth import SawtoothData
from tdl_lightning.data.teacher_student import TeacherStudent, linear_teacher, teacher_network, whiten
from tdl_lightning.data.vision import CIFAR10, MNIST, FashionMNIST, TorchvisionDataModule

__all__ = [
    "CIFAR10",
    "MNIST",
    "FashionMNIST",
    "MNIST5k",
    "OnDeviceLoader",
    "PDECollocation",
    "PDEProblem",
    "SeededPermutation",
    "TeacherStudent",
    "TensorBatches",
    "TensorDataModule",
    "TorchvisionDataModule",
    "collate_batches",
    "make_problem",
    "mnist5k_path",
    "read_mnist5k",
    "split_indices",
    "teacher_network",
    "SawtoothData",
    "linear_teacher",
    "whiten",
    "IBTask",
    "icosahedron_vertices",
    "twelve_bit_task",
]

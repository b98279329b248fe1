"""What a data module tells the model: number of classes, input shape, PDE problem.

``tdl`` links these into the model with LightningCLI's ``link_arguments`` (``apply_on="instantiate"``,
see :class:`~tdl_lightning.lightning_cli.TDLCLI`), so an experiment's YAML states each of them once,
in its ``data:`` section. Each link's ``compute_fn`` is a :class:`DataLink`: it reads the value from
the data module object, or keeps the config's own value where the data module says nothing.

Example:
    >>> from tdl_lightning.data import MNIST5k
    >>> _input_shape(MNIST5k()), _num_classes(MNIST5k())
    ((1, 28, 28), 10)
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["DATA_LINKS", "DataLink"]


def _input_shape(data: Any) -> tuple[int, ...] | None:
    """The shape of one input that a data module states before ``setup``, or ``None``."""
    try:
        shape = data.input_shape  # TensorDataModule: its sample_shape before setup
    except (AttributeError, KeyError):
        shape = None
    if shape is None and isinstance(getattr(data, "input_dim", None), int):
        shape = (data.input_dim,)  # TeacherStudent
    if shape is None and getattr(getattr(data, "problem", None), "coords", None):
        shape = (len(data.problem.coords),)  # PDECollocation: one input per coordinate
    return tuple(int(n) for n in shape) if shape is not None else None


def _image(data: Any) -> tuple[int, ...] | None:
    shape = _input_shape(data)
    return shape if shape is not None and len(shape) == 3 else None


def _output_size(data: Any) -> int | None:
    value = getattr(data, "output_dim", None)  # TeacherStudent (either task), SawtoothData
    return value if isinstance(value, int) else getattr(data, "num_classes", None)


def _flat_input_size(data: Any) -> int | None:
    shape = _input_shape(data)
    return math.prod(shape) if shape is not None else None


def _input_channels(data: Any) -> int | None:
    image = _image(data)
    return image[0] if image else None


def _image_side(data: Any) -> int | None:
    image = _image(data)
    return image[-1] if image else None


def _sample_shape(data: Any) -> list[int] | None:
    shape = _input_shape(data)
    return list(shape) if shape else None


def _num_classes(data: Any) -> int | None:
    value = getattr(data, "num_classes", None)
    return value if isinstance(value, int) else None


def _problem(data: Any) -> Any:
    problem = getattr(data, "problem", None)
    return problem if getattr(problem, "coords", None) else None


_ARCH = "model.init_args.model.init_args"
# What the data module knows and the model needs: (model key, what the data module says). LightningCLI's
# link_arguments applies them once the data module is built (apply_on="instantiate"); a key that is no
# parameter of the chosen class (DeepMLP has no in_channels) is left alone, and where the data module
# says nothing (a data module of the user's own without num_classes) the config's own value stays.
DATA_LINKS: tuple[tuple[str, Any], ...] = (
    ("model.init_args.num_classes", _num_classes),  # Classifier
    ("model.init_args.problem", _problem),  # PINN
    (f"{_ARCH}.num_classes", _num_classes),  # LeNet5
    (f"{_ARCH}.output_dim", _output_size),  # DeepMLP
    (f"{_ARCH}.input_dim", _flat_input_size),  # DeepMLP
    (f"{_ARCH}.in_channels", _input_channels),  # LeNet5, ConvAutoencoder, DCGAN
    (f"{_ARCH}.input_size", _image_side),  # LeNet5, ConvAutoencoder
    (f"{_ARCH}.image_size", _image_side),  # DCGAN
    (f"{_ARCH}.input_shape", _sample_shape),  # MLPAutoencoder
    (f"{_ARCH}.output_shape", _sample_shape),  # MLPGAN
)


class DataLink:
    """``compute_fn`` of a data -> model link: what the data module says, else the config's own value.

    Example:
        >>> link = DataLink("model.init_args.num_classes", _num_classes, lambda key: 7)
        >>> class Digits:
        ...     num_classes = 10
        >>> link(Digits()), link(object())
        (10, 7)
    """

    def __init__(self, target: str, read: Any, config_value: Any) -> None:
        self.target, self.read, self.config_value = target, read, config_value
        self.__name__ = read.__name__.lstrip("_")  # the name `tdl fit --help` shows for the link

    def __call__(self, data: Any) -> Any:
        value = self.read(data)
        return self.config_value(self.target) if value is None else value

"""Diagnostic callbacks that probe a model during training and compare with theory.

Each module holds pure functions (usable from a notebook) and one ``Callback``; all callbacks
share the schedule, probe batch and output handling of :mod:`plugins.base`.

Example:
    >>> import plugins
    >>> isinstance(plugins.__all__, list)
    True
"""

from plugins.curvature import HessianEigenvalues
from plugins.expressivity import LinearRegions
from plugins.filters import FilterVisualisation
from plugins.gradient_noise import GradientNoise
from plugins.information_plane import InformationPlane
from plugins.intrinsic_dimension import IntrinsicDimension
from plugins.jacobian import JacobianSpectrum
from plugins.linear_dynamics import LinearDynamics
from plugins.loss_landscape import LossLandscape
from plugins.ntk import NeuralTangentKernel
from plugins.pictures import LatentInterpolation, LatentScatter, ReconstructionGrid, SampleGrid
from plugins.pinn_pictures import SolutionPictures
from plugins.signal_propagation import InitStatistics

__all__: list[str] = [
    "FilterVisualisation",
    "HessianEigenvalues",
    "LossLandscape",
    "InitStatistics",
    "JacobianSpectrum",
    "LinearRegions",
    "IntrinsicDimension",
    "GradientNoise",
    "NeuralTangentKernel",
    "LinearDynamics",
    "ReconstructionGrid",
    "LatentScatter",
    "LatentInterpolation",
    "SampleGrid",
    "SolutionPictures",
    "InformationPlane",
]

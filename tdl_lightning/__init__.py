"""tdl-lightning: PyTorch Lightning for the theory of deep learning.

The architectures live in :mod:`tdl_lightning.models`, the training objectives in
:mod:`tdl_lightning.tasks`, the data in :mod:`tdl_lightning.data`; the diagnostic callbacks in
the top-level :mod:`plugins` package; ``tdl`` is the command line.

Example:
    >>> import tdl_lightning
    >>> isinstance(tdl_lightning.__version__, str)
    True
"""

__version__ = "0.1.0"

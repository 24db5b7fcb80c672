"""Datasets for training and evaluating networks on simulated PCM chips.

* :func:`load_digits`: scikit-learn's bundled 8x8 digits (needs the ``pcmjax[data]`` extra);
* :func:`load_cifar10`: CIFAR-10 from a local copy of the python batches (never downloaded);
* :func:`write_synthetic_cifar10`: a tiny random folder in the CIFAR-10 format, for tests.

All loaders return a :class:`Dataset` of NumPy arrays (float32 inputs, int32 labels).
"""

from pcmjax.data.cifar10 import load_cifar10, write_synthetic_cifar10
from pcmjax.data.digits import Dataset, load_digits

__all__ = ["Dataset", "load_digits", "load_cifar10", "write_synthetic_cifar10"]

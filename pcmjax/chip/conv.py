"""Convolution reads: the tiles of a convolution layer read the encoded image itself.

On the crossbars a convolution is image patches times the kernel matrix
(:mod:`pcmjax.nn.patches`): every output pixel is one MVM of its patch, one conversion per
column. The PWM encoding is element-wise and maps 0 to 0, so the charge a tile collects,
``patches(q) @ W_t``, is the convolution of the encoded image ``q`` with the tile's rows put
back in the kernel's shape (zero where the tile holds no row), and the per-read-noise
variance ``patches(q²) @ σ²_t`` is the convolution of ``q²`` with the variances. Read that
way, the patches (``prod(kernel_size)`` times the image) are never built; the conversions,
their noise (the same normals, drawn per output pixel and column) and the digital unit are
those of :func:`pcmjax.chip.read.make_read`. The sums are the same up to rounding (the
order of the additions), which can move an ADC count by one.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

__all__ = ["ConvGeometry", "conv_contract"]


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """A channels-last convolution and the kernel-matrix rows each core of a slice holds.

    Attributes:
      kernel_size, strides, input_dilation, kernel_dilation: one int per spatial axis.
      padding: explicit ``(low, high)`` pixels per spatial axis.
      in_features: input channels; the kernel matrix has ``in_features · prod(kernel_size)``
        rows, channel-major (``c · prod(kernel_size)`` + the row-major kernel offset).
      row_chunks: ``(first, stop)`` matrix rows of each core of the slice, in core order.
    """

    kernel_size: tuple
    strides: tuple
    padding: tuple
    input_dilation: tuple
    kernel_dilation: tuple
    in_features: int
    row_chunks: tuple

    @property
    def rows(self) -> int:
        return self.in_features * math.prod(self.kernel_size)


def conv_contract(geometry: ConvGeometry):
    """``contract(q, w) -> [C, B, K]``: each core's charges for the encoded image ``q``.

    ``q`` is ``[N, *spatial, in_features]``; ``w`` is ``[C, R, K]`` (core ``c`` holds matrix
    rows ``row_chunks[c]`` in its first rows); ``B = N · prod(output spatial)``, in the order
    of the patches. Pass it as ``make_read(cfg, contract=...)`` (one-phase reads).
    """
    g = geometry
    n = len(g.kernel_size)
    sp = "HWD"[:n]
    numbers = ("N" + sp + "C", sp + "IO", "N" + sp + "C")
    to_kernel = tuple(range(1, n + 1)) + (0, n + 1)  # [in, *kernel_size, K] → [*kernel_size, in, K]

    def contract(q, w):
        k = w.shape[-1]
        out = []
        for c, (first, stop) in enumerate(g.row_chunks):
            rows = jnp.zeros((g.rows, k), w.dtype).at[first:stop].set(w[c, :stop - first])
            kernel = jnp.transpose(rows.reshape(g.in_features, *g.kernel_size, k), to_kernel)
            y = jax.lax.conv_general_dilated(q, kernel, g.strides, g.padding, lhs_dilation=g.input_dilation,
                                             rhs_dilation=g.kernel_dilation, dimension_numbers=numbers)
            out.append(y.reshape(-1, k))
        return jnp.stack(out)

    return contract

"""Convolution reads: the tiles of a convolution layer read the encoded image itself.

On the crossbars a convolution is image patches times the kernel matrix
(:mod:`pcmjax.chip.patches`): every output pixel is one MVM of its patch, one conversion per
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

from pcmjax.chip.patches import extract_patches

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
    """``contract(q, w)``: each core's charges for the encoded image ``q``.

    One-phase: ``q`` is ``[N, *spatial, in_features]`` and ``w`` is ``[C, R, K]`` (core ``c``
    holds matrix rows ``row_chunks[c]`` in its first rows); returns ``[C, B, K]`` with
    ``B = N · prod(output spatial)``, in the order of the patches. Four-phase: ``q`` is
    ``[2, N, ...]`` (the image's positive and negative parts) and ``w`` is ``[C, 2, R, K]``
    (the two polarities); returns ``[C, 2, 2, B, K]`` (input sign, polarity), read as one
    convolution per core, the two parts as one batch and the two polarities side by side.
    Pass it as ``make_read(cfg, contract=...)``.
    """
    g = geometry
    n = len(g.kernel_size)
    to_kernel = tuple(range(1, n + 1)) + (0, n + 1)  # [in, *kernel_size, K] → [*kernel_size, in, K]
    conv = _batched_convolution(g)

    def kernel(chunk, wc):  # a core's rows [R, K] → the kernel [*kernel_size, in, K] of the whole matrix
        (first, stop), k = chunk, wc.shape[-1]
        rows = jnp.zeros((g.rows, k), wc.dtype).at[first:stop].set(wc[:stop - first])
        return jnp.transpose(rows.reshape(g.in_features, *g.kernel_size, k), to_kernel)

    def contract(q, w):
        k = w.shape[-1]
        if w.ndim == 3:  # one-phase
            return jnp.stack([conv(q, kernel(chunk, w[c])).reshape(-1, k) for c, chunk in enumerate(g.row_chunks)])
        images = q.reshape(-1, *q.shape[2:])  # [2N, ...]: positive parts, then negative
        out = []
        for c, chunk in enumerate(g.row_chunks):
            both = jnp.moveaxis(w[c], 0, -2).reshape(w.shape[2], 2 * k)  # [R, (polarity, K)]
            y = conv(images, kernel(chunk, both)).reshape(2, -1, 2, k)  # [sign, B, polarity, K]
            out.append(jnp.moveaxis(y, 2, 1))
        return jnp.stack(out)

    return contract


# Up to this many kernels in one vmapped batch, their convolutions are written out one by one;
# beyond it, a loop (lax.map) runs them.
UNROLL_LIMIT = 16


def loops_over_kernels() -> bool:
    """Whether a batch of kernels, each with its own image, runs as one convolution per
    kernel (XLA:CPU, where the grouped convolution costs the batch times one group's work)
    rather than as ``vmap`` makes it, one grouped convolution (GPU and TPU)."""
    return jax.default_backend() == "cpu"


def _each(axis_size, fn, args, in_batched):
    """``fn`` of every element of a batch (unbatched arguments shared), stacked."""
    args = [a if b else jnp.broadcast_to(a, (axis_size, *a.shape)) for a, b in zip(args, in_batched)]
    if axis_size <= UNROLL_LIMIT:
        return jnp.stack([fn(*(a[i] for a in args)) for i in range(axis_size)])
    return jax.lax.map(lambda a: fn(*a), tuple(args))


def _batched_convolution(g: ConvGeometry):
    """``conv(image, kernel)`` (channels-last) with a batching rule for batched kernels.

    In a study every time point ages its own kernel, and ``vmap`` would make the batch of
    kernels one grouped convolution, which XLA:CPU runs as a dense convolution with a
    block-diagonal kernel (one group's work times the batch). Here a batch of kernels is
    read instead as one convolution with the kernels side by side in the output channels
    (one image for all of them) or, on the CPU, as one convolution per kernel (an image per
    kernel; :func:`loops_over_kernels`). The values are those of ``vmap``.

    The reverse-mode derivative is that of the same product written as image patches times
    the kernel matrix (:func:`pcmjax.chip.patches.extract_patches`): XLA:CPU runs the
    transposed convolutions of a strided convolution's input gradient about 10× slower.
    Forward mode (``jax.jvp``, ``jax.jacfwd``) is refused by JAX for a convolution read; the
    image patches' read supports it.
    """
    n = len(g.kernel_size)
    sp = "HWD"[:n]
    numbers = ("N" + sp + "C", sp + "IO", "N" + sp + "C")

    def plain(q, kernel):
        return jax.lax.conv_general_dilated(q, kernel, g.strides, g.padding, lhs_dilation=g.input_dilation,
                                            rhs_dilation=g.kernel_dilation, dimension_numbers=numbers)

    def as_patches(q, kernel):  # the same product: patches (channel-major features) @ kernel matrix
        p = extract_patches(q, g.kernel_size, g.strides, g.padding, g.input_dilation, g.kernel_dilation)
        matrix = jnp.moveaxis(kernel, -2, 0).reshape(g.rows, kernel.shape[-1])
        return p @ matrix

    @jax.custom_batching.custom_vmap
    def forward(q, kernel):
        return plain(q, kernel)

    @forward.def_vmap
    def _rule(axis_size, in_batched, q, kernel):
        q_batched, k_batched = in_batched
        if not k_batched:  # the images' batch joins the examples
            y = forward(q.reshape(-1, *q.shape[2:]), kernel)
            return y.reshape(axis_size, q.shape[1], *y.shape[1:]), True
        if not q_batched:  # one image, the kernels side by side in the output channels
            k = kernel.shape[-1]
            side = jnp.moveaxis(kernel, 0, -2).reshape(*kernel.shape[1:-1], axis_size * k)
            y = forward(q, side)
            return jnp.moveaxis(y.reshape(*y.shape[:-1], axis_size, k), -2, 0), True
        if not loops_over_kernels():  # GPU/TPU libraries run grouped convolutions well
            return jax.vmap(plain)(q, kernel), True
        return _each(axis_size, forward, (q, kernel), in_batched), True

    @jax.custom_vjp
    def conv(q, kernel):
        return forward(q, kernel)

    def _fwd(q, kernel):
        return forward(q, kernel), (q, kernel)

    def _bwd(res, ct):
        return jax.vjp(as_patches, *res)[1](ct)

    conv.defvjp(_fwd, _bwd)
    return conv

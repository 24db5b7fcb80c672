"""Image patches of a convolution by padding and strided slicing (pure data movement).

A convolution runs on the crossbars as image patches times the kernel matrix.
:func:`extract_patches` builds those patches with one pad and strided slices (one per
kernel tap of each spatial axis), in the feature order of ``jax.lax.conv_general_dilated_patches``
(channel-major: feature ``c · prod(kernel_size) + offset``, the offsets in row-major
order over the spatial axes), which is the order of :meth:`AnalogConv.matrix`'s rows.
``conv_general_dilated_patches`` computes the same values as a convolution against a
one-hot kernel, which XLA:CPU runs as a real convolution; the slices only move data.
"""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
import numpy as np

Padding = str | tp.Sequence[tuple[int, int]]


def _dilate(size: int, factor: int) -> int:
    """Extent of ``size`` taps spaced ``factor`` apart (0 for no taps)."""
    return 0 if size == 0 else (size - 1) * factor + 1


def patch_padding(spatial_shape: tp.Sequence[int], kernel_size: tp.Sequence[int], strides: tp.Sequence[int],
                  padding: Padding, input_dilation: tp.Sequence[int],
                  kernel_dilation: tp.Sequence[int]) -> list[tuple[int, int]]:
    """The explicit ``(low, high)`` padding of every spatial axis, as ``conv_general_dilated`` resolves it.

    Args:
      spatial_shape: the input's spatial sizes (pixels).
      kernel_size, strides, input_dilation, kernel_dilation: one int per spatial axis.
      padding: ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"`` or ``(low, high)`` pairs (pixels,
        may be negative).

    Returns:
      one ``(low, high)`` pair per spatial axis.
    """
    if isinstance(padding, str):
        if any(d != 1 for d in input_dilation):
            raise ValueError(f"padding={padding!r} is not defined with input_dilation={tuple(input_dilation)}; "
                             "give explicit (low, high) pairs.")
        window = [_dilate(k, r) for k, r in zip(kernel_size, kernel_dilation)]
        return [tuple(map(int, p)) for p in jax.lax.padtype_to_pads(spatial_shape, window, strides, padding)]
    pads = [(int(lo), int(hi)) for lo, hi in padding]
    if len(pads) != len(kernel_size):
        raise ValueError(f"padding must have {len(kernel_size)} (low, high) pairs, got {padding!r}.")
    return pads


def output_shape(spatial_shape: tp.Sequence[int], kernel_size: tp.Sequence[int], strides: tp.Sequence[int],
                 pads: tp.Sequence[tuple[int, int]], input_dilation: tp.Sequence[int],
                 kernel_dilation: tp.Sequence[int]) -> list[int]:
    """Output pixels per spatial axis of the convolution (``pads`` from :func:`patch_padding`)."""
    out = []
    for size, k, s, (lo, hi), di, dk in zip(spatial_shape, kernel_size, strides, pads, input_dilation, kernel_dilation):
        padded, window = _dilate(size, di) + lo + hi, _dilate(k, dk)
        out.append((padded - window) // s + 1 if padded >= window else 0)
    return out


def extract_patches(x: jax.Array, kernel_size: tp.Sequence[int], strides: tp.Sequence[int], padding: Padding,
                    input_dilation: tp.Sequence[int], kernel_dilation: tp.Sequence[int]) -> jax.Array:
    """The patches of a channels-last convolution, ``[N, *spatial, C] → [N, *out, C · prod(kernel_size)]``.

    Equal, value for value, to ``jax.lax.conv_general_dilated_patches(x, kernel_size,
    strides, padding, lhs_dilation=input_dilation, rhs_dilation=kernel_dilation,
    dimension_numbers=("NH…C", "H…IO", "NH…C"))`` on finite inputs (the convolution may
    also turn ``-0.0`` into ``+0.0`` and flush subnormals; the slices keep every bit).

    Args:
      x: ``[N, *spatial, C]`` input (any number of spatial axes).
      kernel_size: taps per spatial axis.
      strides: output stride per spatial axis (pixels).
      padding: ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"`` or one ``(low, high)`` pair per axis.
      input_dilation: spacing of the input pixels (transposed convolution), per axis.
      kernel_dilation: spacing of the kernel taps (atrous convolution), per axis.

    Returns:
      ``[N, *out, C · prod(kernel_size)]``, features channel-major: ``c · prod(kernel_size)``
      plus the row-major index of the kernel offset.
    """
    pads = patch_padding(x.shape[1:-1], kernel_size, strides, padding, input_dilation, kernel_dilation)
    config = [(0, 0, 0)] + [(lo, hi, d - 1) for (lo, hi), d in zip(pads, input_dilation)] + [(0, 0, 0)]
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
    out = output_shape(x.shape[1:-1], kernel_size, strides, pads, input_dilation, kernel_dilation)
    features = x.shape[-1] * int(np.prod(kernel_size))
    if 0 in out or 0 in kernel_size:
        return jnp.zeros((x.shape[0], *out, features), x.dtype)
    # One spatial axis at a time, last to first: its taps become a new axis right after the
    # channels, so the result is [N, *out, C, taps of axis 0, …, taps of axis n-1], the
    # channel-major order of the kernel matrix's rows. Stacking axis by axis is cheaper on
    # XLA:CPU than one stack of every offset (fewer, larger contiguous runs per copy).
    n = len(kernel_size)
    p = xp
    for a in reversed(range(n)):
        taps = []
        for t in range(kernel_size[a]):
            start = [0] * p.ndim
            limit = list(p.shape)
            step = [1] * p.ndim
            start[1 + a] = t * kernel_dilation[a]
            limit[1 + a] = start[1 + a] + (out[a] - 1) * strides[a] + 1
            step[1 + a] = strides[a]
            taps.append(jax.lax.slice(p, start, limit, step))
        p = jnp.stack(taps, axis=n + 2)
    return p.reshape(x.shape[0], *out, features)

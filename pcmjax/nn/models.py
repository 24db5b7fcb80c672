"""Networks built from analog layers: an MLP, a small CNN (digits) and ResNet-9 (CIFAR-10)."""

from __future__ import annotations

import typing as tp

import jax
import jax.numpy as jnp
from flax import nnx

from pcmjax.config.hwa import HWAConfig
from pcmjax.nn.layers import AnalogConv, AnalogLinear, Mode


class MLP(nnx.Module):
    """``in → hidden... → out`` with ReLU between analog linear layers (digits: 64-256-256-10).

    Args:
      in_features: input size.
      hidden: sizes of the hidden layers.
      out_features: output size (logits).
      rngs: ``nnx.Rngs``.
      mode, hwa: passed to every :class:`AnalogLinear`.
    """

    def __init__(self, in_features: int = 64, hidden: tp.Sequence[int] = (256, 256), out_features: int = 10, *,
                 rngs: nnx.Rngs, mode: Mode = "digital", hwa: HWAConfig | None = None):
        sizes = (in_features, *hidden, out_features)
        self.layers = nnx.List([AnalogLinear(a, b, rngs=rngs, mode=mode, hwa=hwa)
                                for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class SmallCNN(nnx.Module):
    """A small CNN for 8×8 digits: three 3×3 analog convolutions (the last two with stride
    2) and an analog linear classifier. Channels ``(16, 32, 64)`` give matrices of 9×16,
    144×32, 288×64 (two row tiles) and 256×10.

    Args:
      in_features: input channels.
      channels: output channels of the three convolutions.
      num_classes: logits.
      image_size: input height = width.
      rngs, mode, hwa: as for :class:`MLP`.
    """

    def __init__(self, in_features: int = 1, channels: tp.Sequence[int] = (16, 32, 64), num_classes: int = 10,
                 image_size: int = 8, *, rngs: nnx.Rngs, mode: Mode = "digital", hwa: HWAConfig | None = None):
        c1, c2, c3 = channels
        kw = dict(rngs=rngs, mode=mode, hwa=hwa)
        self.conv1 = AnalogConv(in_features, c1, (3, 3), **kw)
        self.conv2 = AnalogConv(c1, c2, (3, 3), strides=2, **kw)
        self.conv3 = AnalogConv(c2, c3, (3, 3), strides=2, **kw)
        side = -(-image_size // 4)  # two stride-2 SAME convolutions: ceil(ceil(n / 2) / 2)
        self.head = AnalogLinear(side * side * c3, num_classes, **kw)

    def __call__(self, x):
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = jax.nn.relu(self.conv3(x))
        return self.head(x.reshape(x.shape[0], -1))


class _ConvBN(nnx.Module):
    def __init__(self, cin, cout, *, pool: bool, rngs, mode, hwa):
        self.conv = AnalogConv(cin, cout, (3, 3), use_bias=False, rngs=rngs, mode=mode, hwa=hwa)
        self.bn = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.pool = pool

    def __call__(self, x):
        x = jax.nn.relu(self.bn(self.conv(x)))
        return nnx.max_pool(x, (2, 2), (2, 2)) if self.pool else x


class ResNet9(nnx.Module):
    """ResNet-9 for CIFAR-10 (the network HERMES ran), with analog convolutions and classifier.

    prep (3×3 conv) → layer1 (conv, max-pool, residual block of two convs) → layer2
    (conv, max-pool) → layer3 (conv, max-pool, residual block) → global max-pool →
    linear. Batch-norm, ReLU, pooling and the residual additions are digital (on HERMES
    the digital units apply folded batch-norm and activations and add residuals).

    The default widths ``(56, 112, 224, 224)`` reproduce the network HERMES reports to the
    weight and the core: 1,866,536 analog weights on 40 cores of 256×256, and its largest
    layers (layer3 and the two convolutions of res3, 2016×224) each on 8 cores at 86 %
    utilisation, the "ResNet-9 layer, 8 cores, 86 %" row of Table I. (The widths are not
    stated in our sources; among widths that are multiples of 8 up to 512, these are the
    only ones with both the weight and the core count.) ``(64, 128, 256, 512)`` is the
    original DAWNBench ResNet-9: 6.57 M weights, 2 chips.

    Args:
      num_classes: logits.
      widths: channels of prep, layer1, layer2, layer3.
      rngs, mode, hwa: as for :class:`MLP`.

    References:
      Le Gallo et al., Nat. Electron. 6, 680 (2023); D. Page, "How to train your ResNet" (2018).
    """

    def __init__(self, num_classes: int = 10, widths: tp.Sequence[int] = (56, 112, 224, 224), *, rngs: nnx.Rngs,
                 mode: Mode = "digital", hwa: HWAConfig | None = None):
        w0, w1, w2, w3 = widths
        kw = dict(rngs=rngs, mode=mode, hwa=hwa)
        self.prep = _ConvBN(3, w0, pool=False, **kw)
        self.layer1 = _ConvBN(w0, w1, pool=True, **kw)
        self.res1 = nnx.List([_ConvBN(w1, w1, pool=False, **kw) for _ in range(2)])
        self.layer2 = _ConvBN(w1, w2, pool=True, **kw)
        self.layer3 = _ConvBN(w2, w3, pool=True, **kw)
        self.res3 = nnx.List([_ConvBN(w3, w3, pool=False, **kw) for _ in range(2)])
        self.fc = AnalogLinear(w3, num_classes, **kw)

    def __call__(self, x):
        x = self.layer1(self.prep(x))
        x = x + self.res1[1](self.res1[0](x))
        x = self.layer3(self.layer2(x))
        x = x + self.res3[1](self.res3[0](x))
        x = jnp.max(x, axis=(1, 2))
        return self.fc(x)

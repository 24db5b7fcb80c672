"""Compact cores (pcmjax.chip.compact): a tile smaller than the crossbar simulates only its
used block, with the physics of the padded core.

Without random device noise the compact and the padded chip give the same outputs on the
used columns (undriven rows carry no charge; unused columns are not converted). With
every non-ideality on, the draws differ, so the error statistics are compared: per
instance the mean squared MVM error, over many instances, within 5 standard errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcmjax as pj
from pcmjax import _random
from pcmjax.chip import compact

CFG = pj.ChipConfig(n_cores=2, rows=32, cols=32)
TILES = ((24, 32), (32, 6))  # a 24×32 and a 32×6 tile, each on its own 32×32 core


def _weights():
    w = np.random.default_rng(7).normal(0.0, 0.1, (2, 32, 32)).astype(np.float32)
    for c, (r, k) in enumerate(TILES):
        w[c, r:, :] = 0.0
        w[c, :, k:] = 0.0
    return jnp.asarray(w)


def _inputs(key, batch=8):
    x = jax.random.uniform(key, (2, batch, 32), minval=-1.0, maxval=1.0)
    rows = jnp.asarray([[i < r for i in range(32)] for r, _ in TILES])
    return jnp.where(rows[:, None, :], x, 0.0)  # unused rows are not driven


def _used_columns(y):
    return [y[c, :, :k] for c, (_, k) in enumerate(TILES)]


def _outputs(cfg, key, tiles, t=3600.0):
    k_p, k_t, k_r, k_x = jax.random.split(key, 4)
    state = pj.program_chip(k_p, _weights(), cfg, tiles=tiles).at_time(k_t, t)
    return pj.mvm(k_r, state, _inputs(k_x)), state


def test_groups_of_consecutive_equal_blocks():
    assert compact.core_groups(((4, 4), (4, 4), (2, 4), (4, 4)), 4, 4, 4) == (
        (0, 2, 4, 4), (2, 1, 2, 4), (3, 1, 4, 4))
    assert compact.core_groups(None, 3, 8, 8) == ((0, 3, 8, 8),)


def test_without_device_noise_compact_equals_padded():
    cfg = CFG.without("programming_noise", "drift", "drift_noise", "read_noise", "adc_noise")
    key = jax.random.key(3)
    y_pad, _ = _outputs(cfg, key, None)
    y_cmp, state = _outputs(cfg, key, TILES)
    assert state.groups == ((0, 1, 24, 32), (1, 1, 32, 6))
    for a, b in zip(_used_columns(y_pad), _used_columns(y_cmp)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
    # devices outside the used blocks are not simulated
    assert float(jnp.abs(state.w[0, :, 24:, :]).max()) == 0.0
    assert float(jnp.abs(state.w[1, :, :, 6:]).max()) == 0.0


def test_whole_core_tiles_draw_like_no_tiles():
    key = jax.random.key(5)
    full = ((32, 32), (32, 32))
    y_none, _ = _outputs(CFG, key, None)
    y_full, state = _outputs(CFG, key, full)
    assert state.groups == ((0, 2, 32, 32),)
    np.testing.assert_array_equal(np.asarray(y_full), np.asarray(y_none))


def test_every_used_device_is_written_in_one_flat_draw():
    # The documented order: the groups' blocks in core order, one normal per device from
    # the programming key (the first of program_chip's four), whatever the group count.
    cfg = CFG.only("programming_noise").replace(drift_compensation="none")
    device = pj.devices.HermesPCM(num_devices=2)
    key = jax.random.key(5)
    state = pj.program_chip(key, _weights(), cfg, device, tiles=TILES)
    blocks = [compact.block(state.g_target, grp) for grp in state.groups]
    flat = jnp.concatenate([b.reshape(-1) for b in blocks])
    k_prog = jax.random.split(key, 4)[0]
    expected = device.program_from_normal(flat, _random.normal(k_prog, flat.shape))
    got = jnp.concatenate([compact.block(state.g_prog, grp).reshape(-1) for grp in state.groups])
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-6)
    assert float(jnp.std(got - flat)) > 0.0  # the noise is on


def test_error_statistics_match_the_padded_core():
    """Mean squared MVM error per instance: compact and padded within 5 standard errors."""
    n = 96
    w = _weights()

    def mse(tiles):
        def one(key):
            y, _ = _outputs(CFG, key, tiles, t=86400.0)
            x = _inputs(jax.random.split(key, 4)[3])
            ref = jnp.einsum("cbr,crk->cbk", x, w)
            return jnp.stack([jnp.mean((a - b) ** 2) for a, b in zip(_used_columns(y), _used_columns(ref))])

        return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(11), n)))

    pad, cmp = mse(None), mse(TILES)
    for c in range(2):
        se = np.sqrt(pad[:, c].var(ddof=1) / n + cmp[:, c].var(ddof=1) / n)
        assert abs(pad[:, c].mean() - cmp[:, c].mean()) < 5 * se, (c, pad[:, c].mean(), cmp[:, c].mean(), se)
        assert cmp[:, c].mean() > 0  # the noise is there


def test_tiles_are_validated():
    w = _weights()
    with pytest.raises(ValueError, match="tiles must hold 2"):
        pj.program_chip(jax.random.key(0), w, CFG, tiles=((8, 8),))
    with pytest.raises(ValueError, match="1 <= rows <= 32"):
        pj.program_chip(jax.random.key(0), w, CFG, tiles=((40, 8), (8, 8)))
    with pytest.raises(TypeError, match="integer pairs"):
        pj.program_chip(jax.random.key(0), w, CFG, tiles=(("a", 8), (8, 8)))


def test_layout_tiles_and_report():
    from flax import nnx

    from pcmjax import nn as pnn

    layout = pnn.plan(pnn.MLP(64, (256, 256), 10, rngs=nnx.Rngs(0)), pj.ChipConfig())
    assert layout.tiles == ((64, 256), (256, 256), (256, 10))
    assert f"simulated: {64 * 256 + 256 * 256 + 256 * 10} device pairs" in layout.report()
    big = pnn.plan(pnn.MLP(300, (10,), 10, rngs=nnx.Rngs(0)), pj.ChipConfig())
    assert big.tiles == ((150, 10), (150, 10), (10, 10))  # 300 rows split evenly over two cores

"""Placement: one tile per core, or small tiles sharing a core (first-fit, rows and columns disjoint)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import pcmjax as pj
from pcmjax import cost
from pcmjax import nn as pnn
from pcmjax.config.parasitics import ParasiticsConfig
from pcmjax.nn.placement import pack_tiles


class Chain(nnx.Module):
    """Linear layers chained with a ReLU between them."""

    def __init__(self, sizes, rngs):
        self.layers = nnx.List([pnn.AnalogLinear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == 0 else layer(jax.nn.relu(x))
        return x


def _chain(sizes, seed=0):
    model = Chain(sizes, nnx.Rngs(seed))
    x = jax.random.uniform(jax.random.key(seed + 1), (5, sizes[0]), minval=-1, maxval=1)
    pnn.set_input_scales(model, x)
    model.eval()
    return model, x


def _assert_valid_packing(layout):
    """Every tile once, inside its core, its block the size of its slice, no shared row or column."""
    seen = []
    for core, entries in layout.core_table().items():
        rows, cols = set(), set()
        for i, (a, b, c, d), (r0, r1, c0, c1) in entries:
            assert (r1 - r0, c1 - c0) == (b - a, d - c)
            assert 0 <= r0 < r1 <= layout.core_rows and 0 <= c0 < c1 <= layout.core_cols
            assert rows.isdisjoint(range(r0, r1)) and cols.isdisjoint(range(c0, c1)), (core, entries)
            rows.update(range(r0, r1))
            cols.update(range(c0, c1))
            seen.append((i, (a, b, c, d)))
    expected = [(i, sl) for i, lp in enumerate(layout.layers) for sl in lp.tile_slices]
    assert sorted(seen) == sorted(expected)


def test_pack_tiles_first_fit_by_hand():
    # Tile 2 no longer fits core 0 (rows 200 + 100 > 256); tile 3 does not fit core 0
    # (rows 200 + 60 > 256) but fits core 1 below and right of tile 2.
    assert pack_tiles([(100, 50), (100, 50), (100, 50), (60, 200)], 256, 256) == (
        (0, 0, 0), (0, 100, 50), (1, 0, 0), (1, 100, 50))
    # The digits MLP: every tile spans all rows or all columns, so nothing can share.
    assert pack_tiles([(64, 256), (256, 256), (256, 10)], 256, 256) == ((0, 0, 0), (1, 0, 0), (2, 0, 0))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 16), st.integers(1, 16)), min_size=1, max_size=30))
def test_pack_tiles_never_overlaps_and_never_leaves_a_fitting_core(sizes):
    out = pack_tiles(sizes, 16, 16)
    assert len(out) == len(sizes)
    used = {}
    for (r, k), (core, r0, c0) in zip(sizes, out):
        assert core <= len(used)  # cores open in order, none skipped
        # First fit: every earlier core had no room for this tile at the time.
        for j in range(core):
            ur, uc = used[j]
            assert ur + r > 16 or uc + k > 16
        ur, uc = used.get(core, (0, 0))
        assert (r0, c0) == (ur, uc) and ur + r <= 16 and uc + k <= 16  # below-right of the others
        used[core] = (ur + r, uc + k)


def test_plan_shares_small_layers_and_reports_them():
    model, _ = _chain((16, 16, 16, 16, 40))  # three 16x16 layers and a 16x40
    cfg = pj.ChipConfig.ideal(n_cores=4, rows=64, cols=64)
    alone = pnn.plan(model, cfg)
    shared = pnn.plan(model, cfg, share_cores=True)
    assert alone.n_cores == alone.n_tiles == 4 and not alone.share_cores
    assert shared.n_tiles == 4 and shared.n_cores == 2 and shared.share_cores
    _assert_valid_packing(shared)
    _assert_valid_packing(alone)
    # The fourth layer (16x40) does not fit beside three 16x16 blocks (48 + 40 > 64 columns).
    assert [lp.cores for lp in shared.layers] == [((0, 0),), ((0, 0),), ((0, 0),), ((0, 1),)]
    assert shared.tiles == alone.tiles == ((16, 16), (16, 16), (16, 16), (16, 40))  # simulated: the same arrays
    assert shared.shared() == {0: ("layers/0", "layers/1", "layers/2")}
    assert shared.utilisation == pytest.approx((3 * 256 + 640) / (2 * 64 * 64))
    text = shared.report()
    for needle in ("2 of 4 cores occupied by 4 tiles, 1 shared", "rows 16:32, cols 16:32", "layers/1[0:16, 0:16]",
                   "rows 0:16, cols 0:40", f"{100 * 3 * 256 / 4096:5.1f}%", f"{100 * 640 / 4096:5.1f}%",
                   "core 0:0 is shared by layers/0, layers/1, layers/2"):
        assert needle in text, needle
    assert "shared by" not in alone.report() and "4 of 4 cores occupied (" in alone.report()


def test_shared_cores_give_identical_results_for_the_same_keys():
    model, x = _chain((16, 24, 12, 10))
    cfg = pj.ChipConfig(n_cores=4, rows=64, cols=64)  # every non-ideality of the default chip
    a = pnn.deploy(model, jax.random.key(3), cfg)
    b = pnn.deploy(model, jax.random.key(3), cfg, share_cores=True)
    assert (a.layout.n_cores, b.layout.n_cores) == (3, 1)
    for f in ("g_prog", "nu"):
        np.testing.assert_array_equal(getattr(a.state, f), getattr(b.state, f))
    y_a = a.at_time(jax.random.key(4), 3600.0)(jax.random.key(5), x)
    y_b = b.at_time(jax.random.key(4), 3600.0)(jax.random.key(5), x)
    np.testing.assert_array_equal(y_a, y_b)
    assert float(jnp.max(jnp.abs(y_a - a.reference(x)))) > 0  # the noise is there


def test_sharing_lets_a_network_fit_that_needs_more_tiles_than_cores():
    model, x = _chain((16, 16, 16, 16, 16))  # four 16x16 tiles: one 64x64 core
    cfg = pj.ChipConfig.ideal(n_cores=2, rows=64, cols=64)
    with pytest.raises(ValueError, match=r"needs 4 cores .* n_chips=2"):
        pnn.deploy(model, jax.random.key(0), cfg)
    dep = pnn.deploy(model, jax.random.key(0), cfg, share_cores=True)
    assert dep.layout.n_cores == 1 and dep.state.n_cores == 4  # one physical core, one array per tile
    ref = model(x)
    np.testing.assert_allclose(dep(jax.random.key(1), x), ref, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(ref))))


def test_65_tiles_packed_onto_40_cores_fit_one_hermes_chip():
    class Net(nnx.Module):
        def __init__(self, shapes, rngs):
            self.layers = nnx.List([pnn.AnalogLinear(a, b, rngs=rngs) for a, b in shapes])

    model = Net([(128, 64)] * 50 + [(256, 256)] * 15, nnx.Rngs(0))  # 50 tiles pack two to a core: 25 + 15
    with pytest.raises(ValueError, match="needs 65 cores"):
        pnn.plan(model, pj.ChipConfig())
    layout = pnn.plan(model, pj.ChipConfig(), share_cores=True)
    assert (layout.n_tiles, layout.n_cores) == (65, 40)
    _assert_valid_packing(layout)
    too_big = Net([(256, 256)] * 65, nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"needs 65 cores of 256x256 \(its 65 tiles packed onto shared cores\)"):
        pnn.plan(too_big, pj.ChipConfig(), share_cores=True)


def test_sharing_is_refused_with_wire_resistance_and_checked():
    model, _ = _chain((16, 16, 16))
    cfg = pj.ChipConfig.ideal(n_cores=4, rows=64, cols=64).replace(parasitics=ParasiticsConfig(r_word_line=1.0))
    assert len(pnn.plan(model, cfg).layers) == 2  # without sharing: fine
    with pytest.raises(ValueError, match="share_cores=True is not supported with wire resistance"):
        pnn.deploy(model, jax.random.key(0), cfg, share_cores=True)
    with pytest.raises(TypeError, match="share_cores"):
        pnn.plan(model, cfg, share_cores=1)


def test_cost_of_a_shared_layout_counts_physical_cores():
    model, _ = _chain((16, 16, 16, 16, 40))
    layout = pnn.plan(model, pj.ChipConfig.ideal(n_cores=4, rows=64, cols=64), share_cores=True)
    mvms = {"layers/0": 1.0, "layers/1": 2.0, "layers/2": 3.0, "layers/3": 5.0}
    c = cost.network_cost(cost.from_layout(layout, mvms), read_phases=4)
    assert c["cores_used"] == 2 and c["shared_cores"] == 1
    # Core 0 runs layers 0-2 in turn (1 + 2 + 3 MVMs), core 1 layer 3 (5): core 0 sets the rate.
    assert c["throughput_ips"] == pytest.approx(1e9 / (6 * 520))
    assert c["energy_uj"] == pytest.approx(11 * 3.38 / 64)
    text = cost.report(cost.from_layout(layout, mvms))
    assert "cores used           2 (1 chip of 64; " in text and "1 shared by several layers" in text

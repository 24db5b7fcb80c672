"""Studies of your own networks: a factory named in the study file, its checkpoint, its data.

The end-to-end checks run on ``ChipConfig.ideal()`` (every non-ideality off, so the chip's
MVM is ``x @ W``): the study's accuracy and bits per character must then equal those of
the original Flax model computed directly with optax, an independent reference.
"""

from __future__ import annotations

import math
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import pcmjax as pj
from pcmjax import montecarlo as mc
from pcmjax.montecarlo import config, custom
from pcmjax.montecarlo.datasets import load_npz_dataset
from pcmjax.nn.convert import convert

NETS = textwrap.dedent('''\
    import jax
    import jax.numpy as jnp
    from flax import nnx


    class MLP(nnx.Module):
        def __init__(self, hidden=16, seed=0):
            rngs = nnx.Rngs(seed)
            self.layers = nnx.List([nnx.Linear(12, hidden, rngs=rngs), nnx.Linear(hidden, 3, rngs=rngs)])

        def __call__(self, x):
            return self.layers[1](nnx.relu(self.layers[0](x)))


    class CharRNN(nnx.Module):
        def __init__(self, vocab=7, hidden=8, seed=0):
            rngs = nnx.Rngs(seed)
            self.embed = nnx.Embed(vocab, 5, rngs=rngs)
            self.rnn = nnx.RNN(nnx.LSTMCell(5, hidden, rngs=rngs))
            self.out = nnx.Linear(hidden, vocab, rngs=rngs)

        def __call__(self, tokens):
            return self.out(self.rnn(self.embed(tokens)))


    def mlp(hidden=16, seed=0):
        return MLP(hidden, seed)


    def char_rnn(hidden=8, seed=0):
        return CharRNN(7, hidden, seed)


    def not_a_module():
        return 3
    ''')


@pytest.fixture()
def nets(tmp_path):
    (tmp_path / "nets.py").write_text(NETS)
    return tmp_path


def _factory(folder, name, **kw):
    return custom.build_model(f"nets.py:{name}", kw, folder)


def _classification(folder, model, n=40):
    x = np.asarray(jax.random.uniform(jax.random.key(1), (n, 12)), np.float32)
    y = np.asarray(jax.random.randint(jax.random.key(2), (n,), 0, 3), np.int32)
    mc.save_network(folder / "mlp.npz", model, note="custom")
    np.savez(folder / "data.npz", x=x, y=y)
    return x, y


def _ideal(study):
    chip = pj.ChipConfig.ideal()
    return study.replace(chip=chip, variants=(mc.Variant("ideal", {}),), times=(1.0, 3.0e7), instances=1)


def test_factory_study_on_ideal_chip_equals_original_accuracy(nets):
    model = _factory(nets, "mlp", hidden=16, seed=3)
    x, y = _classification(nets, model)
    sc = config.study_from_dict({"study": {"name": "mine"}, "workload": {
        "model": "nets.py:mlp", "model_args": {"hidden": 16, "seed": 5}, "checkpoint": "mlp.npz",
        "dataset": "data.npz", "calibration_examples": 8}}, nets)
    # The factory's own seed (5) differs: the weights must come from the checkpoint (seed 3).
    expected = float(np.mean(np.argmax(np.asarray(model(jnp.asarray(x))), -1) == y))
    study = _ideal(sc.study)
    assert study.metrics[:2] == ("accuracy", "loss")
    results = mc.run_study(study, None, quiet=True, plots=False)
    np.testing.assert_allclose(results.get("accuracy", "ideal"), expected, atol=1.5 / x.shape[0])
    assert "nets.py:mlp" in study.describe()


def test_language_model_bits_per_character_on_ideal_chip(nets):
    model = _factory(nets, "char_rnn")
    tokens = np.asarray(jax.random.randint(jax.random.key(4), (6, 9), 0, 7), np.int32)
    mc.save_network(nets / "rnn.npz", model)
    np.savez(nets / "text.npz", x=tokens)
    sc = config.study_from_dict({"workload": {"model": "nets.py:char_rnn", "checkpoint": "rnn.npz",
                                              "dataset": "text.npz", "calibration_examples": 3}}, nets)
    assert sc.study.metrics == ("bpc", "accuracy", "layer_error/out", "layer_error/rnn/cell")
    logits = model(jnp.asarray(tokens[:, :-1]))
    bpc = float(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(tokens[:, 1:])).mean())
    results = mc.run_study(_ideal(sc.study), None, quiet=True, plots=False)
    np.testing.assert_allclose(results.get("bpc", "ideal"), bpc / math.log(2), rtol=1e-4)


def test_plain_npz_by_path_loads_the_same_weights(nets):
    src = _factory(nets, "mlp", seed=1)
    flat = nnx.to_flat_state(nnx.state(src, nnx.Param))
    np.savez(nets / "params.npz", **{".".join(map(str, p)): np.asarray(v.get_value()) for p, v in flat})
    dst = custom.load_params(_converted(nets, seed=2), nets / "params.npz")
    x = jax.random.uniform(jax.random.key(0), (5, 12))
    np.testing.assert_array_equal(np.asarray(dst(x)), np.asarray(src(x)))


def _converted(nets, seed):
    return convert(_factory(nets, "mlp", seed=seed))


def test_checkpoint_mismatch_lists_names_and_shapes(nets):
    mc.save_network(nets / "wide.npz", _factory(nets, "mlp", hidden=20))
    with pytest.raises(ValueError) as e:
        custom.load_params(_converted(nets, 0), nets / "wide.npz")
    msg = str(e.value)
    assert "layers/0/kernel: file (12, 20), model (12, 16)" in msg and "wrong shape" in msg
    np.savez(nets / "partial.npz", **{"layers/0/kernel": np.zeros((12, 16), np.float32), "extra/w": np.zeros(3)})
    with pytest.raises(ValueError) as e:
        custom.load_params(_converted(nets, 0), nets / "partial.npz")
    msg = str(e.value)
    assert "missing: layers/0/bias (16,)" in msg and "unexpected: extra/w (3,)" in msg
    _classification(nets, _factory(nets, "mlp"))
    with pytest.raises(config.ConfigError, match="wide.npz' does not match the model's parameters"):
        config.study_from_dict({"workload": {"model": "nets.py:mlp", "checkpoint": "wide.npz",
                                             "dataset": "data.npz"}}, nets)


def test_custom_checkpoint_needs_its_factory(nets):
    path = mc.save_network(nets / "c.npz", _factory(nets, "mlp"))
    with pytest.raises(ValueError, match="load_params"):
        mc.load_network(path)


@pytest.mark.parametrize("spec, message", [
    ("nets.py", "'package.module:factory'"),
    ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
    ("missing.py:f", "cannot import 'missing.py'"),
    ("nets.py:nope", "has no 'nope'"),
    ("nets.py:not_a_module", "not a flax.nnx.Module"),
])
def test_factory_errors_name_the_problem(nets, spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        custom.build_model(spec, {}, nets)


def test_factory_arguments_error(nets):
    with pytest.raises(ValueError, match="the factory raised TypeError"):
        custom.build_model("nets.py:mlp", {"width": 3}, nets)


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 12), np.float32), "y": np.zeros(4, np.float32)}, "y has shape (4,) and dtype float32"),
    ({"x": np.zeros((4, 12), np.float32), "y": np.zeros(3, np.int32)}, "one per example"),
    ({"x": np.zeros((4, 9), np.float32)}, "token sequences: integers"),
    ({"x": np.zeros((4,), np.int32)}, "x has shape (4,)"),
    ({"x": np.zeros((4, 12)), "y": np.zeros(4, np.int32), "x_cal": np.zeros((2, 11))}, "x_cal has shape (2, 11)"),
    ({"x": np.zeros((4, 12)), "labels": np.zeros(4, np.int32)}, "allowed: ['x', 'y', 'x_cal']"),
    ({"x": -np.ones((2, 5), np.int32)}, "token ids in x must be >= 0"),
])
def test_dataset_errors_name_array_shape_and_dtype(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(ValueError) as e:
        load_npz_dataset(tmp_path / "d.npz")
    assert message in str(e.value)


def test_study_file_workload_key_errors(nets):
    _classification(nets, _factory(nets, "mlp"))
    for workload, message in (({"model": "nets.py:mlp", "dataset": "data.npz"}, "needs checkpoint"),
                              ({"model": "nets.py:mlp", "checkpoint": "mlp.npz"}, "needs dataset"),
                              ({"model_args": {"a": 1}}, "model_args belongs to a network of your own")):
        with pytest.raises(config.ConfigError, match=message):
            config.study_from_dict({"workload": workload}, nets)


def test_header_names_device_overrides_fitted_file_and_chip_options(nets, tmp_path):
    _classification(nets, _factory(nets, "mlp"))
    wl = {"model": "nets.py:mlp", "checkpoint": "mlp.npz", "dataset": "data.npz", "calibration_examples": 4}
    sc = config.study_from_dict({"workload": wl, "device": {"model": "hermes", "drift_scale": 1.25},
                                 "chip": {"preset": "hermes-four-phase", "adc": {"noise_std": 0.25}}}, nets)
    assert sc.study.chip == pj.ChipConfig.preset("hermes-four-phase").set("adc.noise_std", 0.25)
    text = sc.study.describe()
    assert "HermesPCM(num_devices=2) with drift_scale=1.25" in text
    assert "adc.max_count=422" in text and "read_phases=4" in text and "adc.noise_std=0.25" in text
    pj.devices.save(pj.devices.PCMLike(), tmp_path / "fit.json")
    sc = config.study_from_dict({"workload": wl, "device": {"file": str(tmp_path / "fit.json")}}, nets)
    text = sc.study.describe()
    assert f"fitted model from {tmp_path / 'fit.json'}" in text and "HERMES defaults" in text
    with pytest.raises(config.ConfigError, match="preset"):
        config.study_from_dict({"workload": wl, "chip": {"preset": "hermes-eight-phase"}}, nets)


def test_exclude_keeps_layers_digital(nets):
    _classification(nets, _factory(nets, "mlp"))
    wl = {"model": "nets.py:mlp", "checkpoint": "mlp.npz", "dataset": "data.npz", "calibration_examples": 4}
    sc = config.study_from_dict({"workload": dict(wl, exclude=["layers/1"])}, nets)
    assert sc.study.metrics == ("accuracy", "loss", "layer_error/layers/0")
    with pytest.raises(config.ConfigError, match="match no module"):
        config.study_from_dict({"workload": dict(wl, exclude=["layers/7"])}, nets)


def _sample_text(model, key, n, length):
    """``n`` token sequences drawn from ``model``'s own next-token distribution."""
    logits_of = nnx.jit(lambda m, x: m(x))
    tokens = jnp.zeros((n, length), jnp.int32).at[:, 0].set(jax.random.randint(key, (n,), 0, 7))
    for t in range(1, length):
        logits = logits_of(model, tokens)[:, t - 1]
        tokens = tokens.at[:, t].set(jax.random.categorical(jax.random.fold_in(key, t), logits))
    return np.asarray(tokens)


READOUT_STUDY = """\
[study]
instances = 8
times = ["1 year"]

[workload]
model = "nets.py:char_rnn"
checkpoint = "rnn.npz"
dataset = "text.npz"
calibration_examples = 32

[variants.calibrated]
drift_compensation = "global"
calibrate = true
[variants.readout]
drift_compensation = "global"
calibrate = "readout"
"""


def test_readout_refit_study_on_a_tiny_lstm(nets):
    """The text is drawn from the digital network itself, so its distribution is the best
    predictor and the read-out refit's target (the KL divergence from it) is the excess of
    the bits per character over it: the refit must not raise them above the per-column fit's."""
    model = _factory(nets, "char_rnn")
    model.out.kernel[...] = 3.0 * model.out.kernel[...]  # confident predictions, sensitive to the chip's noise
    x = _sample_text(model, jax.random.key(6), 64, 12)
    mc.save_network(nets / "rnn.npz", model)
    np.savez(nets / "text.npz", x=x[:32], x_cal=x[32:])
    (nets / "study.toml").write_text(READOUT_STUDY)
    sc = config.load_study_file(nets / "study.toml")
    # The study file's option round trip: the variants, as stored in the study's spec, rebuild the same.
    spec = sc.study.spec()["variants"]
    assert [mc.Variant(**v) for v in spec] == list(sc.study.variants)
    assert [v["calibrate"] for v in spec] == [True, "readout"]
    assert "readout (drift_compensation=global, calibrated + read-out refit)" in sc.study.describe()
    results = mc.run_study(sc.study, None, quiet=True, plots=False)
    cal, readout = results.get("bpc", "calibrated")[:, 0], results.get("bpc", "readout")[:, 0]
    d = readout - cal
    assert np.all(np.isfinite(d))
    assert d.mean() <= 5 * d.std(ddof=1) / math.sqrt(d.size), (cal, readout)
    # Neither beats the text's own distribution beyond the evaluation sample's error.
    logits = model(jnp.asarray(x[:32, :-1]))
    bits = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(x[:32, 1:]))) / math.log(2)
    floor = bits.mean() - 5 * bits.std() / math.sqrt(bits.size)
    assert results.meta["reference"]["bpc"] == pytest.approx(bits.mean(), rel=1e-4)
    assert cal.mean() > floor and readout.mean() > floor

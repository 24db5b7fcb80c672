"""What wire resistance means for networks: first-order model against the exact solve.

Two studies over a sweep of the wire resistance per cell pitch (the same on input lines
and bit lines), each with the two circuit models of ``ParasiticsConfig.method`` as
variants: ``"fixed_point"`` (the first-order expansion, one iteration) and ``"exact"``
(the nodal solve of :mod:`pcmjax.chip.nodal`).

1. ResNet-9 layers (``pcmjax.nn.ResNet9``, CIFAR-10 widths, random He-initialised
   weights): the first 256×256 tile of every layer is mapped onto a core as the chip maps
   it (:func:`pcmjax.chip.mapping.map_weights`, rows from row 0, far end from the ADCs)
   and read with random non-negative inputs (post-ReLU activations, uniform in [0, 1]
   on the tile's rows). Reported per layer: λ (the largest first-order correction,
   ``λ_w + λ_b``), the MVM error of the exact effective conductances against the ideal
   ``x W`` (relative Frobenius norm over 64 inputs), the same after one least-squares
   gain per column (what drift compensation and calibration of the digital unit can
   absorb), and the first-order model's distance from the exact one.
2. Character LSTM (``benchmarks/char_lstm.py``'s network: fixed character vectors, one
   ``nnx.LSTMCell``, a linear read-out) deployed on HERMES chips (``pj.ChipConfig()``)
   with wire resistance: bits per character of next-character prediction one hour after
   programming, mean ± std over ``--instances`` chip instances, for both models. The
   model is the checkpoint of a ``char_lstm.py`` run (``--lstm-dir``: its output folder,
   its test sequences) or, without one, a small LSTM trained here on ``char_lstm.py``'s
   generated text (``--lstm-hidden`` units, ``--lstm-steps`` Adam steps), converted
   without hardware-aware training.
3. Digits MLP 64-256-256-10 (``pcmjax.nn.MLP``, trained in float) deployed on HERMES
   chips (``pj.ChipConfig()``: device noise, drift, ADC, global drift compensation) with
   wire resistance: test accuracy one hour after programming, mean ± std over
   ``--instances`` chip instances, for both models. The drift-compensation reference and
   the per-read noise see the same effective conductances as the signal.

Usage: ``python benchmarks/irdrop_networks.py [--ohms 0.25,0.5,1,2,4] [--instances 3]
[--epochs 40] [--lstm-dir DIR] [--skip-mlp] [--skip-resnet] [--skip-lstm]``; prints
markdown tables and one JSON line.
OpenBLAS is kept to one thread (its threads fight XLA's for the CPU otherwise).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import pcmjax as pj  # noqa: E402
from pcmjax import nn as pnn  # noqa: E402
from pcmjax.chip.mapping import map_weights  # noqa: E402
from pcmjax.chip.parasitics import effective_conductances, kb, kw  # noqa: E402
from pcmjax.config import ParasiticsConfig  # noqa: E402
from pcmjax.data import load_digits  # noqa: E402
from pcmjax.devices import HermesPCM  # noqa: E402
from pcmjax.montecarlo.custom import prepare_network  # noqa: E402
from pcmjax.nn.convert import convert  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import char_lstm  # noqa: E402  (benchmarks/char_lstm.py: the network, its text and its training)

METHODS = ("fixed_point", "exact")
HOUR = 3600.0


def resnet_tiles(seed=0):
    """``(names, [L, 256, 256] tiles)``: the first tile of every ResNet-9 layer."""
    model = pnn.ResNet9(rngs=nnx.Rngs(seed))
    cfg = pj.ChipConfig()
    layout = pnn.plan(model, cfg, n_chips=8)
    tiles = pnn.tile_weights(model, layout)
    names, first = [], []
    for lp in layout.layers:
        (a, b), (c, d) = lp.row_chunks[0], lp.col_chunks[0]
        names.append(f"{lp.name} {lp.shape[0]}×{lp.shape[1]} (tile {b - a}×{d - c})")
        first.append(lp.first_core)
    return names, tiles[np.asarray(first)], cfg


def lam_of(g, r_ohm):
    """λ_w + λ_b of every core (largest first-order corrections), ``g``: ``[C, 2, R, K]`` µS."""
    lw = r_ohm * 1e-6 * jnp.max(kw(g)[..., -1], axis=(-1, -2))
    lb = r_ohm * 1e-6 * jnp.max(kb(g[:, 0] + g[:, 1])[:, 0], axis=-1)
    return np.asarray(lw + lb)


def mvm_errors(w, w_eff, x):
    """Relative MVM error (raw, after one gain per column) over inputs ``x`` ``[N, R]``."""
    y, y_eff = x @ w, x @ w_eff  # [C, N, K]
    norm = jnp.linalg.norm(y, axis=(-1, -2))
    raw = jnp.linalg.norm(y_eff - y, axis=(-1, -2)) / norm
    gain = jnp.sum(y * y_eff, -2, keepdims=True) / jnp.maximum(jnp.sum(y_eff * y_eff, -2, keepdims=True), 1e-30)
    fit = jnp.linalg.norm(gain * y_eff - y, axis=(-1, -2)) / norm
    return np.asarray(raw), np.asarray(fit)


def resnet_study(ohms, log):
    names, tiles, cfg = resnet_tiles()
    g_max = HermesPCM(num_devices=2).g_max
    g, _ = map_weights(tiles, g_max, cfg)  # [L, 2, 256, 256]
    rows = np.asarray(jnp.any(tiles != 0, axis=2))  # [L, R]: rows holding weights
    x = jax.random.uniform(jax.random.key(1), (64, tiles.shape[1])) * rows[:, None, :]
    w = (g[:, 0] - g[:, 1]) / g_max
    out = []
    for r in ohms:
        eff = {}
        t0 = time.perf_counter()
        for m in METHODS:
            par = ParasiticsConfig(r, r, method=m)
            ge = effective_conductances(g, cfg.replace(parasitics=par))
            eff[m] = (ge[:, 0] - ge[:, 1]) / g_max
        lam = lam_of(g, r)
        raw, fit = mvm_errors(w, eff["exact"], x)
        fo_raw, _ = mvm_errors(w, eff["fixed_point"], x)
        dist = np.asarray(jnp.linalg.norm(x @ (eff["fixed_point"] - eff["exact"]), axis=(-1, -2))
                          / jnp.linalg.norm(x @ w, axis=(-1, -2)))
        for i, name in enumerate(names):
            out.append(dict(layer=name, r_ohm=r, lam=float(lam[i]), err_exact=float(raw[i]),
                            err_exact_gain=float(fit[i]), err_first_order=float(fo_raw[i]),
                            first_order_vs_exact=float(dist[i])))
        log(f"[resnet9] r = {r} Ω: {len(names)} layer tiles in {time.perf_counter() - t0:.1f} s")
    return out


def mlp_study(ohms, n_inst, epochs, log):
    data = load_digits()
    model = pnn.MLP(64, (256, 256), 10, rngs=nnx.Rngs(0))
    pnn.train(jax.random.key(0), model, data.x_train, data.y_train, mode="digital", epochs=epochs,
              batch_size=64, learning_rate=2e-3)
    acc_float = float(pnn.accuracy(model, data.x_test, data.y_test, mode="digital"))
    log(f"[mlp] float test accuracy {100 * acc_float:.2f} %")
    x, y = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    keys = jax.random.split(jax.random.key(1000), n_inst)
    out = [dict(r_ohm=0.0, method="none", **_mlp_acc(model, pj.ChipConfig(), keys, x, y))]
    log(f"[mlp] r = 0: {100 * out[0]['mean']:.2f} ± {100 * out[0]['std']:.2f} %")
    for r in ohms:
        for m in METHODS:
            t0 = time.perf_counter()
            cfg = pj.ChipConfig().replace(parasitics=ParasiticsConfig(r, r, method=m))
            out.append(dict(r_ohm=r, method=m, **_mlp_acc(model, cfg, keys, x, y)))
            log(f"[mlp] r = {r} Ω, {m}: {100 * out[-1]['mean']:.2f} ± {100 * out[-1]['std']:.2f} % "
                f"({time.perf_counter() - t0:.1f} s)")
    return acc_float, out


def _mlp_acc(model, cfg, keys, x, y):
    dep = pnn.deploy(model, jax.random.key(0), cfg, program=False)
    ident = pnn.identity_calibration(dep.layout)

    def one(key):
        k_p, k_t, k_r = jax.random.split(key, 3)
        state = dep.program(k_p).at_time(k_t, HOUR)
        return jnp.mean(jnp.argmax(dep.apply(state, ident, k_r, x), -1) == y)

    acc = np.asarray(jax.jit(jax.vmap(one))(keys))
    return dict(mean=float(acc.mean()), std=float(acc.std()), n=int(acc.size))


def lstm_model(lstm_dir, hidden, steps, log, n_test=16, length=64):
    """``(analog model, test tokens [N, T + 1], float bpc, description)`` of the character LSTM."""
    if lstm_dir:
        folder = Path(lstm_dir)
        args = json.loads((folder / "char_lstm_summary.json").read_text())["args"]
        fa = {k: args[k] for k in ("embed", "hidden", "seed")}
        x = np.load(folder / "test.npz")["x"]
        model = prepare_network(char_lstm.char_lstm(**fa), folder / "char_lstm.npz", x[:8])
        what = f"char_lstm.py checkpoint {folder} (embed {fa['embed']}, {fa['hidden']} units)"
    else:
        key = jax.random.key(0)
        tokens, _ = char_lstm.encode(char_lstm.generated_text(jax.random.fold_in(key, 7)))
        split = int(0.9 * tokens.size)
        net = char_lstm.char_lstm(embed=max(16, hidden // 2), hidden=hidden, seed=0)
        if steps > 0:
            char_lstm.train_lm(key, net, tokens[:split], steps=steps, batch=16, length=length, learning_rate=1e-2,
                               log=None)
        model = convert(net, data=jnp.asarray(char_lstm.sequences(tokens[:split], 32, length)))
        x = char_lstm.sequences(tokens[split:], n_test, length + 1)
        what = f"LSTM of {hidden} units trained here on generated text ({steps} steps)"
    bpc = char_lstm.bits_per_char(model, x)
    log(f"[lstm] {what}: float {bpc:.3f} bits/char on {x.shape[0]} x {x.shape[1] - 1} characters")
    return model, jnp.asarray(x), bpc, what


def _lstm_bpc(model, cfg, keys, x):
    dep = pnn.deploy(model, None, cfg, program=False)
    ident = pnn.identity_calibration(dep.layout)

    def one(key):
        k_p, k_t, k_r = jax.random.split(key, 3)
        state = dep.program(k_p).at_time(k_t, HOUR)
        logits = dep.apply(state, ident, k_r, x[:, :-1])
        return optax_ce(logits, x[:, 1:]) / math.log(2.0)

    bpc = np.asarray(jax.jit(jax.vmap(one))(keys))
    return dict(mean=float(bpc.mean()), std=float(bpc.std()), n=int(bpc.size))


def optax_ce(logits, labels):
    """Mean cross-entropy (nats) of integer ``labels`` under ``logits``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def lstm_study(ohms, n_inst, log, lstm_dir=None, hidden=64, steps=600, cfg=None):
    """Bits per character against wire resistance, first order and exact: ``(float bpc, what, rows)``."""
    model, x, bpc_float, what = lstm_model(lstm_dir, hidden, steps, log)
    cfg = pj.ChipConfig() if cfg is None else cfg
    keys = jax.random.split(jax.random.key(2000), n_inst)
    out = [dict(r_ohm=0.0, method="none", **_lstm_bpc(model, cfg, keys, x))]
    log(f"[lstm] r = 0: {out[0]['mean']:.3f} ± {out[0]['std']:.3f} bits/char")
    for r in ohms:
        for m in METHODS:
            t0 = time.perf_counter()
            out.append(dict(r_ohm=r, method=m, **_lstm_bpc(
                model, cfg.replace(parasitics=ParasiticsConfig(r, r, method=m)), keys, x)))
            log(f"[lstm] r = {r} Ω, {m}: {out[-1]['mean']:.3f} ± {out[-1]['std']:.3f} bits/char "
                f"({time.perf_counter() - t0:.1f} s)")
    return bpc_float, what, out


def _method_table(rows, ohms, fmt):
    lines = ["| r (Ω) | first order | exact |", "|---|---|---|",
             f"| 0 | {fmt(rows[0])} | (same) |"]
    for r in ohms:
        cell = {m: next(x for x in rows if x["r_ohm"] == r and x["method"] == m) for m in METHODS}
        lines.append(f"| {r:g} | " + " | ".join(fmt(cell[m]) for m in METHODS) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ohms", default="0.25,0.5,1,2,4")
    p.add_argument("--instances", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--skip-mlp", action="store_true")
    p.add_argument("--skip-resnet", action="store_true")
    p.add_argument("--skip-lstm", action="store_true")
    p.add_argument("--lstm-dir", help="output folder of a benchmarks/char_lstm.py run (its checkpoint, test data)")
    p.add_argument("--lstm-hidden", type=int, default=64, help="units of the LSTM trained here (no --lstm-dir)")
    p.add_argument("--lstm-steps", type=int, default=600, help="its training steps")
    a = p.parse_args(argv)
    ohms = [float(s) for s in a.ohms.split(",")]
    log = print
    result = dict(bench="irdrop_networks", ohms=ohms)
    if not a.skip_resnet:
        rows = resnet_study(ohms, log)
        print("\n| layer | r (Ω) | λ | exact vs ideal | exact, per-column gain | first order vs ideal | "
              "first order vs exact |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['layer']} | {r['r_ohm']:g} | {r['lam']:.3f} | {r['err_exact']:.2e} | "
                  f"{r['err_exact_gain']:.2e} | {r['err_first_order']:.2e} | {r['first_order_vs_exact']:.2e} |")
        result["resnet9"] = rows
    if not a.skip_mlp:
        acc_float, rows = mlp_study(ohms, a.instances, a.epochs, log)
        print(f"\nDigits MLP, float {100 * acc_float:.2f} %; HERMES chips, 1 h after programming "
              f"({a.instances} instances):\n")
        print(_method_table(rows, ohms, lambda c: f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}"))
        result["mlp"] = dict(float=acc_float, rows=rows)
    if not a.skip_lstm:
        bpc_float, what, rows = lstm_study(ohms, a.instances, log, a.lstm_dir, a.lstm_hidden, a.lstm_steps)
        print(f"\nCharacter LSTM ({what}), float {bpc_float:.3f} bits/char; HERMES chips, 1 h after "
              f"programming ({a.instances} instances), bits per character:\n")
        print(_method_table(rows, ohms, lambda c: f"{c['mean']:.3f} ± {c['std']:.3f}"))
        result["lstm"] = dict(float=bpc_float, model=what, rows=rows)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

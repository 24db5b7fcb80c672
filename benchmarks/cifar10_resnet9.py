"""CIFAR-10 ResNet-9 on simulated HERMES chips: train, HWA fine-tune, deploy, accuracy over time.

The network HERMES ran (Le Gallo et al., Nat. Electron. 2023): a ResNet-9 whose
convolutions and classifier are analog (:class:`pcmjax.nn.ResNet9`), with batch-norm,
ReLU, pooling and residual additions in the digital units. The script

1. loads CIFAR-10 from a local folder of the standard python batches
   (``--data`` or ``$PCMJAX_CIFAR10``; nothing is downloaded);
2. trains it in float (random crops and flips), then fine-tunes it hardware-aware;
3. deploys it (placement report), programs ``--instances`` chips (vmapped in chunks of
   ``--chunk``) and reports test accuracy at each ``--times`` (mean ± std), with global
   drift compensation and, with ``--calibrate``, per-column calibration at each time.

Meant for a GPU (full data, 30 + 10 epochs). ``--synthetic`` runs a CI-scale smoke test
on a tiny random folder in the same format (:func:`pcmjax.data.write_synthetic_cifar10`).
The last line printed is one JSON object:
``{"float": acc, "hwa_digital": acc, "results": {variant: {time_s: [mean, std]}}}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import pcmjax as pj
from pcmjax import nn as pnn
from pcmjax.data import load_cifar10, write_synthetic_cifar10


def augment(key, x: np.ndarray) -> np.ndarray:
    """Random 32×32 crops of the 4-pixel reflect-padded images and random horizontal flips."""
    n, h, w, _ = x.shape
    k_y, k_x, k_f = jax.random.split(key, 3)
    dy, dx = np.asarray(jax.random.randint(k_y, (n,), 0, 9)), np.asarray(jax.random.randint(k_x, (n,), 0, 9))
    flip = np.asarray(jax.random.bernoulli(k_f, 0.5, (n,)))
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    out = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    out[flip] = out[flip, :, ::-1]
    return out


def make_chip_accuracy(dep, batch: int):
    """``(states, cals, keys, x, y) -> accuracies [instances]`` of a chunk of chip instances, in
    test batches; one compiled program per deployment (and batch shape), reused at every time."""
    @jax.jit
    def correct(states, cals, keys, xb, yb):
        def one(state, cal, key):
            return jnp.sum(jnp.argmax(dep.apply(state, cal, key, xb), axis=-1) == yb)
        return jax.vmap(one)(states, cals, keys)

    def chip_accuracy(states, cals, keys, x, y):
        total = 0
        for i in range(0, x.shape[0], batch):
            ks = jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
            total = total + correct(states, cals, ks, jnp.asarray(x[i:i + batch]), jnp.asarray(y[i:i + batch]))
        return np.asarray(total) / x.shape[0]

    return chip_accuracy


def evaluate(dep, data, args, log, tag, x_cal=None):
    """``{False: {t: acc[instances]}, True: {t: acc}}`` (True: calibrated, if ``x_cal``)."""
    times = args.times
    out = {False: {t: [] for t in times}, True: {t: [] for t in times}}
    age = jax.jit(jax.vmap(lambda s, k, t: s.at_time(k, t), in_axes=(0, 0, None)))
    calibrate = None
    if x_cal is not None:
        calibrate = jax.jit(jax.vmap(pnn.make_calibrator(dep, x_cal, steps=args.cal_steps, batch_size=args.cal_batch)))
    chip_accuracy = make_chip_accuracy(dep, args.eval_batch)
    all_keys = jax.random.split(jax.random.key(1000 + args.seed), args.instances)
    for c in range(0, args.instances, args.chunk):
        keys = all_keys[c:c + args.chunk]
        n = keys.shape[0]
        states = jax.vmap(dep.program)(keys)
        ident = jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), pnn.identity_calibration(dep.layout))
        for i, t in enumerate(times):
            k = jax.vmap(lambda kk: jax.random.fold_in(kk, i))(keys)
            st = age(states, jax.vmap(lambda kk: jax.random.fold_in(kk, 1))(k), jnp.float32(t))
            out[False][t].append(chip_accuracy(st, ident, k, data.x_test, data.y_test))
            if calibrate is not None:
                cals, _ = calibrate(st, jax.vmap(lambda kk: jax.random.fold_in(kk, 3))(k))
                out[True][t].append(chip_accuracy(st, cals, k, data.x_test, data.y_test))
        log(f"[{tag}] instances {c + 1}-{c + n} done")
    return {cal: {t: np.concatenate(v) for t, v in d.items() if v} for cal, d in out.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="folder of the CIFAR-10 python batches (default: $PCMJAX_CIFAR10)")
    p.add_argument("--synthetic", action="store_true", help="CI smoke test on a tiny synthetic folder")
    p.add_argument("--widths", default="56,112,224,224",
                   help="ResNet-9 channels: prep,layer1,layer2,layer3 "
                        "(default: HERMES's 1,866,536 weights on 40 cores)")
    p.add_argument("--epochs", type=int, default=30, help="float training epochs")
    p.add_argument("--hwa-epochs", type=int, default=10, help="hardware-aware fine-tuning epochs")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-test", type=int, default=None)
    p.add_argument("--instances", type=int, default=10, help="chip instances")
    p.add_argument("--chunk", type=int, default=5, help="chip instances evaluated at once (vmapped)")
    p.add_argument("--times", default="1,3600,86400,2592000,31536000", help="seconds after programming")
    p.add_argument("--calibrate", action="store_true", help="also calibrate at every time")
    p.add_argument("--cal-examples", type=int, default=512)
    p.add_argument("--cal-steps", type=int, default=200)
    p.add_argument("--cal-batch", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=500)
    p.add_argument("--n-chips", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    log = lambda s: print(s, flush=True)  # noqa: E731
    tmp = None
    if args.synthetic:
        tmp = tempfile.TemporaryDirectory()
        args.data = str(write_synthetic_cifar10(tmp.name, n_train_per_batch=8, n_test=16, seed=args.seed))
        args.widths, args.epochs, args.hwa_epochs, args.batch_size = "8,8,16,16", 1, 1, 20
        args.instances, args.chunk, args.times = 2, 2, "1,86400"
        args.cal_examples, args.cal_steps, args.cal_batch, args.calibrate = 16, 3, 8, True
    args.times = [float(t) for t in args.times.split(",")]
    widths = tuple(int(w) for w in args.widths.split(","))
    t_start = time.perf_counter()
    data = load_cifar10(args.data, normalize=True, max_train=args.max_train, max_test=args.max_test)
    log(f"CIFAR-10 from {args.data or '$PCMJAX_CIFAR10'}: {data.x_train.shape[0]} training, "
        f"{data.x_test.shape[0]} test images; JAX backend: {jax.default_backend()}")

    model = pnn.ResNet9(data.num_classes, widths, rngs=nnx.Rngs(args.seed))
    h = pnn.train(jax.random.key(args.seed), model, data.x_train, data.y_train, epochs=args.epochs,
                  batch_size=args.batch_size, learning_rate=args.lr, weight_decay=5e-4, augment=augment)
    acc_float = pnn.accuracy(model, data.x_test, data.y_test, mode="digital", batch_size=args.eval_batch)
    log(f"float training: {h['seconds']:.0f} s, test accuracy {100 * acc_float:.2f} %")
    hwa_model = nnx.clone(model)
    h = pnn.train(jax.random.key(args.seed + 1), hwa_model, data.x_train, data.y_train, mode="hwa",
                  hwa=pnn.HWAConfig(), epochs=args.hwa_epochs, batch_size=args.batch_size, learning_rate=args.lr / 4,
                  weight_decay=5e-4, augment=augment)
    acc_hwa = pnn.accuracy(hwa_model, data.x_test, data.y_test, mode="digital", batch_size=args.eval_batch)
    log(f"HWA fine-tuning: {h['seconds']:.0f} s, digital test accuracy {100 * acc_hwa:.2f} %")

    cfg = pj.ChipConfig()
    # program=False: every chip instance is programmed below, from its own key
    dep_f = pnn.deploy(model, jax.random.key(args.seed), cfg, n_chips=args.n_chips, program=False)
    dep_h = pnn.deploy(hwa_model, jax.random.key(args.seed), cfg, n_chips=args.n_chips, program=False)
    log(dep_h.report())
    res_f = evaluate(dep_f, data, args, log, "float")
    x_cal = data.x_train[:args.cal_examples] if args.calibrate else None
    res_h = evaluate(dep_h, data, args, log, "hwa", x_cal)
    results = {"float_gdc": res_f[False], "hwa_gdc": res_h[False]}
    if args.calibrate:
        results["hwa_gdc_cal"] = res_h[True]
    log(f"\nResNet-9 {widths}: float {100 * acc_float:.2f} %, HWA (digital) {100 * acc_hwa:.2f} %; on chip, mean ± std "
        f"over {args.instances} chips (%)")
    log(f"{'variant':<13}" + "".join(f"{t:>16.0f}" for t in args.times))
    for v, r in results.items():
        log(f"{v:<13}" + "".join(f"{100 * r[t].mean():>9.2f} ± {100 * r[t].std():4.2f}" for t in args.times))
    log(f"total {time.perf_counter() - t_start:.0f} s")
    print(json.dumps({"float": round(acc_float, 6), "hwa_digital": round(acc_hwa, 6),
                      "results": {v: {str(int(t)): [round(float(r[t].mean()), 6), round(float(r[t].std()), 6)]
                                      for t in args.times} for v, r in results.items()}}))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()

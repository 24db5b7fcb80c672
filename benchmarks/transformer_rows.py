"""A small transformer encoder on the HERMES chip: the digits' rows as 8 tokens.

A plain Flax model (``nnx.MultiHeadAttention`` and MLP blocks, pre-norm, mean-pooled
tokens, a linear head) reads each 8×8 digit as a sequence of 8 row tokens. It is trained
digitally, converted unmodified with :func:`pcmjax.nn.convert` (the query, key, value and
output projections, the MLPs, the row embedding and the head become analog; layer norms,
scores and softmax stay digital), fine-tuned hardware-aware with :func:`pcmjax.nn.train`,
saved with :func:`pcmjax.montecarlo.save_network` and studied through a study file
(``[workload] model = "transformer_rows.py:row_transformer"``): accuracy from 1 s to
1 year after programming on the HERMES chip, without drift compensation, with global
drift compensation and with per-column calibration.

    python benchmarks/transformer_rows.py                     # 20 instances, 6 times
    python benchmarks/transformer_rows.py --smoke --out /tmp/tr_smoke
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pcmjax import montecarlo as mc
from pcmjax import nn as pnn
from pcmjax.data import load_digits
from pcmjax.montecarlo import config as mcc
from pcmjax.nn.convert import convert

HERE = Path(__file__).resolve().parent


class Block(nnx.Module):
    """Pre-norm encoder block: self-attention and a two-layer MLP, each with a residual."""

    def __init__(self, d: int, heads: int, mlp: int, *, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(d, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
        self.norm2 = nnx.LayerNorm(d, rngs=rngs)
        self.mlp_in = nnx.Linear(d, mlp, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp, d, rngs=rngs)

    def __call__(self, h):
        h = h + self.attn(self.norm1(h))
        return h + self.mlp_out(nnx.gelu(self.mlp_in(self.norm2(h))))


class RowTransformer(nnx.Module):
    """Rows of an 8×8 image as 8 tokens → encoder blocks → mean over tokens → 10 classes.

    Args:
      d: token width.
      heads: attention heads.
      mlp: hidden width of each block's MLP.
      depth: encoder blocks.
      seed: seed of the initial weights.
    """

    def __init__(self, d: int = 32, heads: int = 4, mlp: int = 64, depth: int = 2, seed: int = 0):
        rngs = nnx.Rngs(params=seed)
        self.embed = nnx.Linear(8, d, rngs=rngs)
        self.pos = nnx.Param(0.1 * jax.random.normal(jax.random.key(seed + 1), (8, d)))
        self.blocks = nnx.List([Block(d, heads, mlp, rngs=rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.head = nnx.Linear(d, 10, rngs=rngs)

    def __call__(self, x):
        """``x [N, 64]`` (or ``[N, 8, 8]``) pixels in [0, 1] → logits ``[N, 10]``."""
        h = self.embed(jnp.reshape(x, (x.shape[0], 8, 8))) + self.pos[...]
        for block in self.blocks:
            h = block(h)
        return self.head(jnp.mean(self.norm(h), axis=1))


def row_transformer(d: int = 32, heads: int = 4, mlp: int = 64, depth: int = 2, seed: int = 0) -> RowTransformer:
    """The study file's factory (``[workload] model = "transformer_rows.py:row_transformer"``)."""
    return RowTransformer(d, heads, mlp, depth, seed)


STUDY_TOML = """\
# The row transformer on the HERMES chip (written by benchmarks/transformer_rows.py).
[study]
name = "row-transformer"
instances = {instances}
seed = 0
times = {times}
output = "{output}"

[workload]
kind = "network"
model = "{factory}"
model_args = {{ d = {d}, heads = {heads}, mlp = {mlp}, depth = {depth}, seed = {seed} }}
checkpoint = "row_transformer.npz"
dataset = "digits_rows.npz"
calibration_examples = {n_cal}
{extra}
[device]
model = "hermes"
num_devices = 2
"""


# The smoke run: few examples, two variants without calibration (a calibrated variant
# compiles one more forward pass per analog layer), accuracy only (seconds, not minutes).
SMOKE_EXTRA = """eval_examples = 64

[variants.none]
drift_compensation = "none"
[variants.gdc]
drift_compensation = "global"
"""


def _toml_times(text: str) -> str:
    """``"1 s,1 day"`` as a TOML list of time strings."""
    return "[" + ", ".join(f'"{t.strip()}"' for t in text.split(",") if t.strip()) + "]"


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="transformer_rows_results")
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--mlp", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--epochs", type=int, default=60, help="digital training epochs")
    p.add_argument("--hwa-epochs", type=int, default=20, help="hardware-aware fine-tuning epochs (0: none)")
    p.add_argument("--instances", type=int, default=20)
    p.add_argument("--times", default="1 s,1 h,1 day,1 month,1 year", help="times after programming, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--smoke", "--quick", action="store_true", help="tiny model, few epochs, no HWA, 8 instances")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.smoke:
        # No HWA fine-tuning (its step compiles for longer than the digital training runs);
        # 8 instances cost what 1 does (the study evaluates a group of 8 at once).
        args.d, args.heads, args.mlp, args.depth, args.epochs, args.hwa_epochs = 16, 2, 32, 1, 3, 0
        args.instances, args.times = 8, "1 s,1 year"
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ds = load_digits()
    key = jax.random.key(args.seed)
    ckpt = out / "row_transformer.npz"
    factory_args = {"d": args.d, "heads": args.heads, "mlp": args.mlp, "depth": args.depth, "seed": args.seed}
    if args.retrain or not ckpt.exists():
        model = row_transformer(**factory_args)
        h1 = pnn.train(jax.random.fold_in(key, 0), model, ds.x_train, ds.y_train, epochs=args.epochs,
                       batch_size=64, learning_rate=3e-3)
        acc_float = pnn.accuracy(model, ds.x_test, ds.y_test)
        analog = convert(model, data=jnp.asarray(ds.x_train[:256]))
        h2, acc_hwa = {"seconds": 0.0}, acc_float  # without fine-tuning: the digital network (convert is exact)
        if args.hwa_epochs > 0:
            h2 = pnn.train(jax.random.fold_in(key, 1), analog, ds.x_train, ds.y_train, mode="hwa",
                           epochs=args.hwa_epochs, batch_size=64, learning_rate=1e-3)
            acc_hwa = pnn.accuracy(analog, ds.x_test, ds.y_test, mode="digital")
        layers = [("/".join(map(str, p)), tuple(int(d) for d in m.matrix_shape())) for p, m in
                  pnn.analog_layers(analog)]
        mc.save_network(ckpt, analog, factory_args=factory_args, test_accuracy_float=acc_float,
                        test_accuracy_after_hwa=acc_hwa, train_seconds=h1["seconds"] + h2["seconds"],
                        analog_layers=layers)
        print(f"float {100 * acc_float:.2f} %, after HWA {100 * acc_hwa:.2f} % (digital); "
              f"{len(layers)} analog layers; trained in {h1['seconds'] + h2['seconds']:.0f} s", flush=True)
    np.savez(out / "digits_rows.npz", x=ds.x_test, y=ds.y_test, x_cal=ds.x_train[:256])
    toml = STUDY_TOML.format(instances=args.instances, times=_toml_times(args.times), output=out / "study",
                             factory=HERE / "transformer_rows.py:row_transformer", n_cal=32 if args.smoke else 256,
                             extra=SMOKE_EXTRA if args.smoke else "", **factory_args)
    (out / "study.toml").write_text(toml)
    sc = mcc.load_study_file(out / "study.toml")
    results = mc.run_study(sc.study, sc.output, plots=not args.smoke)
    print(results.table(metrics=["accuracy"]))
    summary = {"args": vars(args), "run": results.run_info, "reference": results.meta.get("reference", {}),
               "times_s": list(sc.study.times),
               "accuracy": {v: [float(m) for m in np.mean(results.get("accuracy", v), axis=0)]
                            for v in sc.study.variant_names},
               "accuracy_std": {v: [float(s) for s in np.std(results.get("accuracy", v), axis=0)]
                                for v in sc.study.variant_names}}
    (out / "transformer_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

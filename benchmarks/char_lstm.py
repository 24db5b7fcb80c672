"""A character-level LSTM language model on the HERMES chip: bits per character over a year.

HERMES's second published workload (Le Gallo et al. 2023; PHYSICS.md §6) is a character
LSTM on Penn Treebank: characters embedded as fixed random orthogonal 128-vectors, one
LSTM of 504 units (gate columns interleaved, 128 × 2016 input and 504 × 2016 recurrent
weights), a 504 × 50 output layer, 26 cores; 1.336 bits per character in software,
1.433 on chip. This script builds that network as a plain Flax model (``nnx.RNN`` over
``nnx.LSTMCell``, ``nnx.Linear``), trains it on a public-domain text, converts it with
:func:`pcmjax.nn.convert`, fine-tunes it hardware-aware, saves it with
:func:`pcmjax.montecarlo.save_network` and runs a Monte Carlo study of it through a
study file (``[workload] model = "char_lstm.py:char_lstm"``): bits per character from
1 s to 1 year after programming on the HERMES chip, with global drift compensation, with
per-column calibration and with that calibration followed by the read-out refit
(``calibrate = "readout"``).

The text is the King James Bible of the Debian package ``bible-kjv`` (public domain;
``apt-get install bible-kjv``; its ``bible`` command prints the text), or any plain
text given with ``--text``. ``--smoke`` runs the whole pipeline on a small generated
text in a few tens of seconds (the test suite's check).

    python benchmarks/char_lstm.py                          # HERMES shape, KJV, 20 instances
    python benchmarks/char_lstm.py --hidden 128 --steps 3000 --hwa-steps 300 --length 64 --out /tmp/char_lstm
    python benchmarks/char_lstm.py --smoke --out /tmp/char_lstm_smoke

The HERMES shape (504 units, 26 cores) trains at about 3 s per step of 32 × 100
characters on two shared CPU cores; the figures in benchmarks/RESULTS.md are of the
documented smaller shape above (128 units: a 256 × 512 LSTM matrix on 2 cores and a
128 × 50 read-out on 1), which trains in about 15 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pcmjax import montecarlo as mc
from pcmjax import nn as pnn
from pcmjax.montecarlo import config as mcc
from pcmjax.nn.convert import convert

VOCAB = 50
HERE = Path(__file__).resolve().parent
KJV_HINT = ("the King James Bible text comes from the Debian package bible-kjv: install it with "
            "`apt-get install bible-kjv` (its `bible` command prints the text), or pass --text FILE with any "
            "plain text of a few megabytes")


# -- the network -----------------------------------------------------------------------------
class FixedEmbedding(nnx.Variable):
    """Character vectors that training leaves alone (not an ``nnx.Param``)."""


class CharLSTM(nnx.Module):
    """Characters → fixed random orthogonal vectors → one LSTM → a linear read-out.

    Args:
      vocab: number of characters.
      embed: dimension of the character vectors (HERMES: 128).
      hidden: LSTM units (HERMES: 504).
      seed: seed of the embedding and of the initial weights.
    """

    def __init__(self, vocab: int = VOCAB, embed: int = 128, hidden: int = 504, seed: int = 0):
        key = jax.random.key(seed)
        q = jax.random.orthogonal(jax.random.fold_in(key, 1), max(embed, vocab))[:vocab, :embed]
        # Rows are orthonormal; scaled so the largest entry is 1, the full scale of the inputs.
        self.table = FixedEmbedding(q / jnp.max(jnp.abs(q)))
        rngs = nnx.Rngs(params=jax.random.fold_in(key, 2))
        self.rnn = nnx.RNN(nnx.LSTMCell(embed, hidden, rngs=rngs))
        self.out = nnx.Linear(hidden, vocab, rngs=rngs)

    def __call__(self, tokens):
        """``tokens [N, T]`` (integers) → logits of the next character ``[N, T, vocab]``."""
        return self.out(self.rnn(self.table[...][tokens]))


def char_lstm(vocab: int = VOCAB, embed: int = 128, hidden: int = 504, seed: int = 0) -> CharLSTM:
    """The study file's factory (``[workload] model = "char_lstm.py:char_lstm"``)."""
    return CharLSTM(vocab, embed, hidden, seed)


# -- the text ---------------------------------------------------------------------------------
def kjv_text() -> str:
    """The King James Bible from the ``bible`` command of Debian's ``bible-kjv``."""
    exe = shutil.which("bible")
    if exe is None:
        raise SystemExit(f"char_lstm.py: no text: {KJV_HINT}.")
    out = subprocess.run([exe, "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True).stdout
    verses = [re.sub(r"^\S+?\d+:\d+\s+", "", line) for line in out.splitlines() if line.strip()]
    if len(verses) < 30000:
        raise SystemExit(f"char_lstm.py: `bible` printed only {len(verses)} verses; {KJV_HINT}.")
    return "\n".join(verses)


def generated_text(key, n_chars: int = 60000) -> str:
    """A small text with structure an LSTM learns quickly: words of a tiny Markov grammar."""
    words = ["the", "chip", "reads", "a", "core", "of", "phase", "change", "memory", "and", "drift", "noise",
             "with", "every", "column", "in", "time", "after", "programming", "is", "calibrated", "digital"]
    nxt = np.asarray(jax.random.randint(key, (len(words), 3), 0, len(words)))
    choice = np.asarray(jax.random.randint(jax.random.fold_in(key, 1), (n_chars // 3,), 0, 3))
    out, w, i, size = [], 0, 0, 0
    while size < n_chars:  # size: the characters of " ".join(out) plus one
        out.append(words[w])
        size += len(words[w]) + 1
        w = int(nxt[w, choice[i % choice.size]])
        i += 1
    return " ".join(out)


def encode(text: str, vocab: int = VOCAB):
    """Lower-cased text as integer tokens: the ``vocab − 1`` most frequent characters, the
    rest mapped to one extra token. Returns ``(tokens int32, alphabet)``."""
    text = text.lower()
    chars, counts = np.unique(np.frombuffer(text.encode("utf-32-le"), np.uint32), return_counts=True)
    keep = chars[np.argsort(-counts, kind="stable")][: vocab - 1]
    lut = {int(c): i for i, c in enumerate(keep)}
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    tokens = np.fromiter((lut.get(int(c), vocab - 1) for c in codes), np.int32, codes.size)
    return tokens, "".join(chr(int(c)) for c in keep)


def sequences(tokens, n: int, length: int) -> np.ndarray:
    """``n`` consecutive, non-overlapping windows of ``length`` tokens: ``[n, length]``."""
    n = min(n, tokens.size // length)
    return tokens[: n * length].reshape(n, length)


# -- training ---------------------------------------------------------------------------------
def _loss(model, x):
    logits = model(x[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:]).mean()


@nnx.jit
def _step(model, opt, x):
    loss, grads = nnx.value_and_grad(_loss)(model, x)
    opt.update(model, grads)
    return loss


@nnx.jit
def _eval_loss(model, x):
    return _loss(model, x)


def train_lm(key, model, tokens, *, steps: int, batch: int, length: int, learning_rate: float, log=print):
    """Adam (clipped gradients, cosine decay) on random windows of ``tokens``; in place."""
    opt = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0),
                                           optax.adam(optax.cosine_decay_schedule(learning_rate, steps, 0.05))),
                        wrt=nnx.Param)
    model.train()
    t0, losses = time.perf_counter(), []
    for s in range(steps):
        start = np.asarray(jax.random.randint(jax.random.fold_in(key, s), (batch,), 0, tokens.size - length - 1))
        x = jnp.asarray(tokens[start[:, None] + np.arange(length + 1)])
        losses.append(float(_step(model, opt, x)))
        if log and (s + 1) % max(1, steps // 10) == 0:
            log(f"    step {s + 1}/{steps}: {np.mean(losses[-50:]) / math.log(2):.3f} bits/char "
                f"({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return time.perf_counter() - t0


def bits_per_char(model, x) -> float:
    """Mean cross-entropy of the next character, in bits, digitally."""
    view = nnx.view(model, mode="digital", raise_if_not_found=False)
    return float(_eval_loss(view, jnp.asarray(x))) / math.log(2)


def time_steps(args, tokens, n_steps: int = 20) -> dict:
    """Seconds per training step, digital and hardware-aware, of the network of ``args``
    (after one compiling step each; the median of ``n_steps`` steps)."""
    out = {}
    for mode in ("digital", "hwa"):
        model = char_lstm(embed=args.embed, hidden=args.hidden, seed=args.seed)
        analog = convert(model, data=jnp.asarray(sequences(tokens, 8, args.length)))
        pnn.set_mode(analog, mode)
        opt = nnx.Optimizer(analog, optax.adam(1e-3), wrt=nnx.Param)
        analog.train()
        times = []
        for s in range(n_steps + 1):
            start = np.asarray(jax.random.randint(jax.random.key(s), (args.batch,), 0, tokens.size - args.length - 1))
            x = jnp.asarray(tokens[start[:, None] + np.arange(args.length + 1)])
            t0 = time.perf_counter()
            jax.block_until_ready(_step(analog, opt, x))
            times.append(time.perf_counter() - t0)
        out[mode] = float(np.median(times[1:]))
    out["hwa_over_digital"] = out["hwa"] / out["digital"]
    return out


# -- the pipeline -----------------------------------------------------------------------------
def _toml_times(text: str) -> str:
    """``"1 s,1 day"`` as a TOML list of time strings."""
    return "[" + ", ".join(f'"{t.strip()}"' for t in text.split(",") if t.strip()) + "]"


def _parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", help="a plain-text file (default: the King James Bible of Debian's bible-kjv)")
    p.add_argument("--out", default="char_lstm_results", help="folder for the checkpoint, data and study")
    p.add_argument("--embed", type=int, default=128, help="dimension of the fixed character vectors")
    p.add_argument("--hidden", type=int, default=504, help="LSTM units (HERMES: 504)")
    p.add_argument("--steps", type=int, default=3000, help="digital training steps")
    p.add_argument("--hwa-steps", type=int, default=1000, help="hardware-aware fine-tuning steps (0: none)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=100, help="training window, characters")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-sequences", type=int, default=32)
    p.add_argument("--eval-length", type=int, default=128)
    p.add_argument("--instances", type=int, default=20)
    p.add_argument("--times", default="1 s,1 h,1 day,1 month,1 year", help="times after programming, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retrain", action="store_true", help="train again even if the checkpoint exists")
    p.add_argument("--train-only", action="store_true", help="stop after training (no chip study)")
    p.add_argument("--time-steps", action="store_true",
                   help="only time digital and hardware-aware training steps (seconds per step)")
    p.add_argument("--smoke", "--quick", action="store_true",
                   help="tiny network, generated text, no HWA, 8 instances: the whole pipeline in seconds")
    return p


def _smoke(args):
    """The test suite's sizes: compiling dominates, so no hardware-aware fine-tuning (its
    step compiles for longer than the digital one trains) and 8 instances (the study
    evaluates a group of 8 at once: they cost what 1 does)."""
    args.embed, args.hidden, args.steps, args.hwa_steps, args.lr = 16, 32, 400, 0, 1e-2
    args.batch, args.length, args.eval_sequences, args.eval_length = 16, 32, 16, 32
    args.instances, args.times = 8, "1 s,1 year"


def train_checkpoint(args, key, train, valid, path: Path, log=print) -> dict:
    """Digital training, conversion, HWA fine-tuning; the checkpoint written to ``path``."""
    factory_args = {"embed": args.embed, "hidden": args.hidden, "seed": args.seed}
    model = char_lstm(**factory_args)
    x_val = sequences(valid, 64, args.eval_length + 1)
    log(f"  digital training: {args.steps} steps of {args.batch} × {args.length} characters")
    t_dig = train_lm(jax.random.fold_in(key, 0), model, train, steps=args.steps, batch=args.batch,
                     length=args.length, learning_rate=args.lr, log=log)
    bpc_float = bits_per_char(model, x_val)
    analog = convert(model, data=jnp.asarray(sequences(train, 64, args.length)))
    t_hwa = 0.0
    if args.hwa_steps > 0:
        pnn.set_mode(analog, "hwa")
        log(f"  hardware-aware fine-tuning: {args.hwa_steps} steps")
        t_hwa = train_lm(jax.random.fold_in(key, 1), analog, train, steps=args.hwa_steps, batch=args.batch,
                         length=args.length, learning_rate=args.lr / 3, log=log)
    pnn.clip_weights(analog)
    # Without fine-tuning the converted network is the digital one (convert is exact).
    bpc_hwa = bits_per_char(analog, x_val) if args.hwa_steps > 0 else bpc_float
    info = {"factory_args": factory_args, "valid_bpc_digital_training": bpc_float, "valid_bpc_after_hwa": bpc_hwa,
            "train_seconds": t_dig + t_hwa, "steps": args.steps, "hwa_steps": args.hwa_steps, "batch": args.batch,
            "length": args.length, "learning_rate": args.lr}
    mc.save_network(path, analog, **info)
    log(f"  validation: {bpc_float:.3f} bits/char after digital training, {bpc_hwa:.3f} after HWA "
        f"({t_dig + t_hwa:.0f} s); saved {path}")
    return info


VARIANTS = """
[variants.none]
drift_compensation = "none"
[variants.gdc]
drift_compensation = "global"
[variants.calibrated]
drift_compensation = "global"
calibrate = true
[variants.calibrated_readout]
drift_compensation = "global"
calibrate = "readout"
"""
# The smoke run: compensated, and calibrated with the read-out refit (seconds, not minutes).
SMOKE_EXTRA = """
[variants.gdc]
drift_compensation = "global"
[variants.calibrated_readout]
drift_compensation = "global"
calibrate = "readout"
"""

STUDY_TOML = """\
# The character LSTM on the HERMES chip (written by benchmarks/char_lstm.py).
[study]
name = "char-lstm"
instances = {instances}
seed = 0
times = {times}
output = "{output}"

[workload]
kind = "network"
model = "{factory}"
model_args = {{ embed = {embed}, hidden = {hidden}, seed = {seed} }}
checkpoint = "char_lstm.npz"
dataset = "test.npz"
calibration_examples = {n_cal}
{extra}
[device]
model = "hermes"
num_devices = 2

[chip]
preset = "hermes-four-phase"
"""


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.smoke:
        _smoke(args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(args.seed)
    if args.smoke:
        text, source = generated_text(jax.random.fold_in(key, 7)), "generated"
    elif args.text:
        text, source = Path(args.text).read_text(encoding="utf-8", errors="replace"), args.text
    else:
        text, source = kjv_text(), "King James Bible (Debian bible-kjv)"
    tokens, alphabet = encode(text)
    n = tokens.size
    train, valid, test = tokens[: int(0.9 * n)], tokens[int(0.9 * n): int(0.95 * n)], tokens[int(0.95 * n):]
    print(f"text: {source}, {n} characters, {len(alphabet)} + 1 tokens; train/valid/test 90/5/5 %", flush=True)
    if args.time_steps:
        print(json.dumps(time_steps(args, train)), flush=True)
        return 0
    ckpt = out / "char_lstm.npz"
    if args.retrain or not ckpt.exists():
        train_checkpoint(args, key, train, valid, ckpt)
    else:
        print(f"  reusing {ckpt} (--retrain to train again)")
    if args.train_only:
        return 0
    n_cal = max(4, args.eval_sequences // 2)
    np.savez(out / "test.npz", x=sequences(test, args.eval_sequences, args.eval_length + 1),
             x_cal=sequences(train, n_cal, args.eval_length + 1))
    toml = STUDY_TOML.format(instances=args.instances, times=_toml_times(args.times), output=out / "study",
                             factory=HERE / "char_lstm.py:char_lstm", embed=args.embed, hidden=args.hidden,
                             seed=args.seed, n_cal=n_cal, extra=SMOKE_EXTRA if args.smoke else VARIANTS)
    (out / "study.toml").write_text(toml)
    sc = mcc.load_study_file(out / "study.toml")
    results = mc.run_study(sc.study, sc.output, plots=not args.smoke)
    print(results.table())
    summary = {"text": source, "characters": int(n), "args": vars(args), "run": results.run_info,
               "reference": results.meta.get("reference", {}),
               "bpc": {v: [float(m) for m in np.mean(results.get("bpc", v), axis=0)] for v in sc.study.variant_names},
               "bpc_std": {v: [float(s) for s in np.std(results.get("bpc", v), axis=0)]
                           for v in sc.study.variant_names},
               "times_s": list(sc.study.times)}
    (out / "char_lstm_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A one-minute tour: MVM error of a HERMES-class chip from 1 s to 1 year after programming.

Run ``python -m pcmjax.demo``. The chip uses the full HERMES
configuration (256×256 PCM crossbars with two devices per sign, 8-bit PWM inputs, CCO
ADCs with per-column mismatch, one-phase reads, per-read and accumulated 1/f noise,
drift), but only a few of its 64 cores are simulated to keep the run short. For each
time the demo prints the relative error ``‖y − xW‖ / ‖xW‖`` of the chip's MVM against
the exact float product, without and with global drift compensation, as mean ± standard
deviation over several independently programmed chip instances.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from pcmjax.chip import ChipConfig, mvm, program_chip
from pcmjax.cli import _positive_int
from pcmjax.devices import HermesPCM

# Times after programming (seconds) and their labels.
TIMES = (
    ("1 s", 1.0),
    ("1 hour", 3600.0),
    ("1 day", 86400.0),
    ("1 month", 30 * 86400.0),
    ("1 year", 365.25 * 86400.0),
)
MODES = (("none", "no compensation"), ("global", "global drift comp."))


def relative_errors(key, weights, x, cfg: ChipConfig, device, times_s):
    """Relative MVM error ``‖y − xW‖ / ‖xW‖`` of one programmed chip at several times.

    Args:
      key: a ``jax.random`` key (programming, ageing and reads).
      weights: ``[cores, rows, cols]`` weights.
      x: ``[cores, batch, rows]`` inputs in [−1, 1].
      cfg: chip configuration.
      device: device model.
      times_s: ``[T]`` seconds after programming.

    Returns:
      ``[T]`` relative errors (Frobenius norm over all cores and the batch).
    """
    k_prog, k_time = jax.random.split(key)
    state = program_chip(k_prog, weights, cfg, device)
    exact = jnp.einsum("cbr,crk->cbk", x, weights)
    norm = jnp.linalg.norm(exact)

    def one_time(args):
        i, t = args
        k_age, k_read = jax.random.split(jax.random.fold_in(k_time, i))
        y = mvm(k_read, state.at_time(k_age, t), x)
        return jnp.linalg.norm(y - exact) / norm

    # lax.map keeps one aged copy of the chip in memory at a time.
    return jax.lax.map(one_time, (jnp.arange(len(times_s)), jnp.asarray(times_s, jnp.float32)))


@partial(jax.jit, static_argnames=("cfg",))
def _errors_over_instances(keys, weights, x, cfg, device, times_s):
    return jax.vmap(relative_errors, in_axes=(0, None, None, None, None, None))(keys, weights, x, cfg, device,
                                                                               times_s)


def run(cores: int = 8, seed: int = 0, instances: int = 3, batch: int = 64) -> dict:
    """Compute the demo's table.

    Returns:
      dict ``{mode: [instances, T] array}`` for ``mode`` in ``("none", "global")``.
    """
    key = jax.random.key(seed)
    k_w, k_x, k_chip = jax.random.split(key, 3)
    base = ChipConfig()
    device = HermesPCM(num_devices=2)
    # Gaussian weights (a typical trained layer); the mapping scales each core by its abs-max.
    weights = jax.random.normal(k_w, (cores, base.rows, base.cols), jnp.float32) / np.sqrt(base.rows)
    x = jax.random.uniform(k_x, (cores, batch, base.rows), jnp.float32, -1.0, 1.0)
    times_s = jnp.asarray([t for _, t in TIMES], jnp.float32)
    keys = jax.random.split(k_chip, instances)  # the same chip instances for both modes
    out = {}
    for mode, _ in MODES:
        cfg = base.replace(drift_compensation=mode)
        out[mode] = np.asarray(_errors_over_instances(keys, weights, x, cfg, device, times_s))
    return out


def format_table(errors: dict) -> str:
    """The demo's table: one row per time, ``mean ± std`` in percent per mode."""
    head = f"{'time after programming':<24}" + "".join(f"{label:>24}" for _, label in MODES)
    lines = [head, "-" * len(head)]
    for i, (label, _) in enumerate(TIMES):
        cells = []
        for mode, _ in MODES:
            e = 100.0 * errors[mode][:, i]
            cells.append(f"{e.mean():6.2f} % ± {e.std():5.2f} %")
        lines.append(f"{label:<24}" + "".join(f"{c:>24}" for c in cells))
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Entry point of ``python -m pcmjax.demo``; returns the errors of :func:`run`."""
    cfg = ChipConfig()
    parser = argparse.ArgumentParser(prog="python -m pcmjax.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=_positive_int, default=8,
                        help=f"cores to simulate, 1..{cfg.n_cores} (default 8; the chip has {cfg.n_cores})")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--instances", type=_positive_int, default=3,
                        help="independently programmed chip instances to average over (default 3)")
    parser.add_argument("--batch", type=_positive_int, default=64, help="input vectors per core (default 64)")
    args = parser.parse_args(argv)
    if args.cores > cfg.n_cores:
        parser.error(f"--cores must be at most {cfg.n_cores}, got {args.cores}")

    print("pcmjax demo: relative MVM error ‖y − xW‖/‖xW‖ of a HERMES-class PCM chip")
    print(f"  chip:    full HERMES configuration ({cfg.rows}×{cfg.cols} crossbars, {cfg.pwm.bits}-bit PWM, "
          f"{cfg.adc.bits}-bit CCO ADC, {cfg.read_phases}-phase reads, {cfg.program.method.replace('_', '-')} "
          "programming), device HermesPCM(num_devices=2)")
    print(f"  cores:   {args.cores} of the {cfg.n_cores} simulated, to stay quick (--cores to change)")
    print(f"  weights: Gaussian per core, abs-max mapped; inputs uniform in [-1, 1], batch {args.batch} per core")
    print(f"  stats:   mean ± std over {args.instances} chip instances (seed {args.seed})")
    print()
    start = time.perf_counter()
    errors = run(cores=args.cores, seed=args.seed, instances=args.instances, batch=args.batch)
    print(format_table(errors))
    print()
    print(f"done in {time.perf_counter() - start:.1f} s")
    sys.stdout.flush()
    return errors


if __name__ == "__main__":
    main()

"""IR drop: the exact crossbar solve against the circuit simulator ngspice, and its cost.

Accuracy: random arrays (R = K up to 64) with random differential inputs, over a sweep of
λ = λ_w + λ_b (the largest relative correction, PHYSICS of chip/parasitics.py); every
array is written as a SPICE netlist (drivers, wire segments, devices, ADC segments with a
0 V source as ammeter) and solved by ngspice's operating point. The column currents of
``transfer_pair`` (float32, the default) must agree within 1e-4 of the largest; the
first-order model's error is shown beside it.

Cost, all in the same run (wall and process CPU seconds; the CPU time is the steadier
figure on a shared machine):

1. the exact solve by each solver of :data:`pcmjax.chip.nodal.SOLVERS` (Cholesky with an
   explicit inverse, Cholesky with triangular solves, LU) side by side, and its gradient,
   timed on ``--cores`` 256×256 cores and scaled to 64 (cores are independent);
2. per state, on the full chip (``ChipConfig()``, 64 cores, r = 1 Ω per pitch): the setup
   ``state.at_time(key, t)`` (ageing, the transfer conductances, the compensation
   reference read) with the exact wires and without wires;
3. per read, on the same chip: ``pcmjax.mvm`` of a state whose transfer conductances exist,
   with the exact wires and without (the same computation: the effective conductances
   replace the devices'), and the bare ``einsum`` for scale, at each batch of ``--batches``;
4. the break-even: reads of one state after which the exact circuit's cost per read,
   ``setup / N + read``, is within 10× of a read without wires;
5. ``program_chip`` against ``at_time`` with the exact wires on 2 cores (programming reads
   the compensation reference and prepares the state at t = 0: two solves);
6. for the iterative alternative (conjugate gradients on the nodal system, preconditioned
   by the lines' tridiagonal blocks, with the ``K`` ADC drives as a batch of right-hand
   sides) the two pieces of one iteration on one core: the nodal operator and the
   preconditioner.

OpenBLAS (LAPACK behind the LU and triangular solves) is kept to one thread: with its
default threads it competes with XLA's own and, on a loaded CPU, the solve was 10-20×
slower (``OPENBLAS_NUM_THREADS`` set before anything loads it).

ngspice is installed from the Debian package when missing (``apt-get install ngspice``).

Usage: ``python benchmarks/bench_irdrop.py [--sizes 8,16,32,64] [--lams 0.1,1,3.5,10]
[--cores 1] [--chip-cores 64] [--batches 64,256] [--skip-accuracy] [--skip-cost]``;
prints tables and one JSON line.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.lax.linalg import tridiagonal_solve  # noqa: E402

import pcmjax as pj  # noqa: E402
from pcmjax.chip.nodal import SOLVERS, transfer_pair  # noqa: E402
from pcmjax.chip.parasitics import effective_pair  # noqa: E402
from pcmjax.config import ParasiticsConfig  # noqa: E402


def ensure_ngspice() -> str:
    path = shutil.which("ngspice")
    if path is None:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "ngspice"], check=True, env=env, capture_output=True)
        path = shutil.which("ngspice")
    if path is None:
        raise RuntimeError("ngspice is not available and could not be installed.")
    return path


def netlist(gp, gn, v, rw, rb) -> str:
    """SPICE netlist of one crossbar; conductances in µS, inputs in V, wires in Ω."""
    n_r, n_k = gp.shape
    out = ["* crossbar", ".options noacct"]
    for i in range(n_r):
        for pol, sign, g in (("p", 1.0, gp), ("n", -1.0, gn)):
            out.append(f"V{pol}{i} d{pol}{i} 0 DC {sign * v[i]:.17g}")
            out.append(f"Rd{pol}{i} d{pol}{i} {pol}{i}_0 {rw:.17g}")
            for k in range(n_k):
                if k + 1 < n_k:
                    out.append(f"Rw{pol}{i}_{k} {pol}{i}_{k} {pol}{i}_{k + 1} {rw:.17g}")
                if g[i, k] > 0:
                    out.append(f"Rc{pol}{i}_{k} {pol}{i}_{k} b{i}_{k} {1e6 / g[i, k]:.17g}")
    for k in range(n_k):
        for i in range(n_r - 1):
            out.append(f"Rb{i}_{k} b{i}_{k} b{i + 1}_{k} {rb:.17g}")
        out.append(f"Ra{k} b{n_r - 1}_{k} a{k} {rb:.17g}")
        out.append(f"Va{k} a{k} 0 DC 0")
    out += [".control", "set numdgt=15", "op"] + [f"print i(va{k})" for k in range(n_k)] + [".endc", ".end"]
    return "\n".join(out) + "\n"


def spice_currents(ngspice, gp, gn, v, rw, rb) -> np.ndarray:
    """Column currents (A, into the ADCs) from ngspice."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "xbar.cir")
        with open(path, "w") as f:
            f.write(netlist(gp, gn, v, rw, rb))
        res = subprocess.run([ngspice, "-b", path], capture_output=True, text=True)  # exit 1 on notes
    vals = dict(re.findall(r"i\(va(\d+)\)\s*=\s*([-+0-9.eE]+)", res.stdout))
    n_k = gp.shape[1]
    if len(vals) != n_k:
        raise RuntimeError(f"ngspice printed {len(vals)} of {n_k} currents:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return np.array([float(vals[str(k)]) for k in range(n_k)])


def accuracy(ngspice, sizes, lams, seed=0):
    rows = []
    rng = np.random.default_rng(seed)
    for n in sizes:
        for lam in lams:
            w = rng.uniform(-1, 1, (n, n))
            gp, gn = np.maximum(w, 0) * 20.7, np.maximum(-w, 0) * 20.7
            v = rng.uniform(-0.2, 0.2, n)
            # λ = λ_w + λ_b with λ_w = r Ḡ⁺ K²/2 and λ_b = r Ḡᵗ R²/2 (the same r on both lines).
            r = lam / (1e-6 * (gp.mean() * n * n + (gp + gn).mean() * n * n) / 2)
            ref = spice_currents(ngspice, gp, gn, v, r, r) * 1e6  # V·µS
            ap, an = transfer_pair(jnp.asarray(gp, jnp.float32), jnp.asarray(gn, jnp.float32), r, r)
            exact = v @ np.asarray(ap - an, np.float64)
            fp, fn = effective_pair(jnp.asarray(gp, jnp.float32), jnp.asarray(gn, jnp.float32), r, r)
            first = v @ np.asarray(fp - fn, np.float64)
            scale = np.max(np.abs(ref))
            ideal = v @ (gp - gn)
            rows.append(dict(size=n, lam=lam, r_ohm=float(r),
                             ir_drop=float(np.max(np.abs(ideal - ref)) / np.max(np.abs(ideal))),
                             err_exact=float(np.max(np.abs(exact - ref)) / scale),
                             err_first_order=float(np.max(np.abs(first - ref)) / scale)))
    return rows


def _time(fn, *args, repeat=3):
    """Best ``(wall, process CPU)`` seconds of ``fn(*args)`` over ``repeat`` runs after a warm-up.

    The CPU time (all threads) is the steadier figure on a shared machine: the wall time
    of a run grows with the other processes' load, its CPU time much less."""
    jax.block_until_ready(fn(*args))
    wall = cpu = float("inf")
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn(*args))
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu


def _time_once(fn, *args):
    """``(wall, CPU, result)``: seconds of one run of ``fn`` compiled ahead (compile excluded)."""
    compiled = jax.jit(fn).lower(*args).compile()
    c0, t0 = time.process_time(), time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return time.perf_counter() - t0, time.process_time() - c0, out


def _line_chain(g, gw, n):
    """Tridiagonal blocks ``gw·L + diag(g)`` of lines along the last axis (grounded at index 0)."""
    d = gw * jnp.full(g.shape, 2.0).at[..., -1].set(1.0) + g
    off = -gw * jnp.ones_like(g)
    return off.at[..., 0].set(0.0), d, off.at[..., -1].set(0.0)


def iteration_pieces(n=256, r=1.0):
    """One core, ``n`` right-hand sides: seconds of the nodal operator and the preconditioner."""
    g = jax.random.uniform(jax.random.key(1), (2, n, n), maxval=20.0)
    gw = gb = 1.0 / (r * 1e-6)
    blocks = [_line_chain(g[0], gw, n), _line_chain(g[1], gw, n), _line_chain((g[0] + g[1]).T, gb, n)]

    def operator(u):  # u: [3, R, K, N]; Laplacians of the lines plus the device stamps
        p, q, b = u

        def lap(x, axis, gl):
            lo = jnp.roll(x, 1, axis) * (jnp.arange(x.shape[axis]) > 0).reshape((-1,) + (1,) * (2 - axis))
            hi = jnp.roll(x, -1, axis) * (jnp.arange(x.shape[axis]) < x.shape[axis] - 1).reshape(
                (-1,) + (1,) * (2 - axis))
            return gl * (2 * x - lo - hi)

        gp, gn = g[0][..., None], g[1][..., None]
        return jnp.stack([lap(p, 1, gw) + gp * (p - b), lap(q, 1, gw) + gn * (q - b),
                          lap(b, 0, gb) + gp * (b - p) + gn * (b - q)])

    def precondition(u):  # three batched tridiagonal solves: input lines, then bit lines
        zp = tridiagonal_solve(*blocks[0], u[0])
        zn = tridiagonal_solve(*blocks[1], u[1])
        zb = jnp.swapaxes(tridiagonal_solve(*blocks[2], jnp.swapaxes(u[2], 0, 1)), 0, 1)
        return jnp.stack([zp, zn, zb])

    u = jax.random.normal(jax.random.key(2), (3, n, n, n))
    return _time(jax.jit(operator), u), _time(jax.jit(precondition), u)


def solver_cost(cores, n=256, chip_cores=64):
    """The transfer conductances of ``cores`` 256×256 cores by each solver, scaled to the chip."""
    g = jax.random.uniform(jax.random.key(0), (cores, 2, n, n), maxval=20.0)
    out = {}
    for solver in SOLVERS:
        wall, cpu = _time(lambda a, b, s=solver: transfer_pair(a, b, 1.0, 1.0, solver=s), g[:, 0], g[:, 1],
                          repeat=2)
        out[solver] = dict(wall_chip_s=wall * chip_cores / cores, cpu_chip_s=cpu * chip_cores / cores)
    loss = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.square(transfer_pair(a, b, 1.0, 1.0)[0]))))
    wall, cpu = _time(loss, g[:, 0], g[:, 1], repeat=1)
    out["gradient"] = dict(wall_chip_s=wall * chip_cores / cores, cpu_chip_s=cpu * chip_cores / cores)
    return out


def chip_cost(batches, chip_cores=64, r_ohm=1.0, t=3600.0):
    """Per-state setup and per-read cost of a full HERMES chip, exact wires against none.

    The chip is programmed once without wire resistance; the same state with the exact
    solve configured is aged (``at_time``: ageing, the solve, the compensation reference
    read), then read by :func:`pcmjax.mvm`. Setups are single runs compiled ahead."""
    plain = pj.ChipConfig(n_cores=chip_cores)
    exact = plain.replace(parasitics=ParasiticsConfig(r_ohm, r_ohm, method="exact"))
    key = jax.random.key(0)
    w = jax.random.normal(key, (plain.n_cores, plain.rows, plain.cols)) / 16
    state = pj.program_chip(key, w, plain)
    age = lambda k, s, tt: s.at_time(k, tt)  # noqa: E731
    out = {}
    for name, cfg in (("plain", plain), ("exact", exact)):
        st = state.replace(cfg=cfg)
        wall, cpu, aged = _time_once(age, jax.random.key(1), st, t)
        out[f"setup_{name}"] = dict(wall_s=wall, cpu_s=cpu)
        read = jax.jit(pj.mvm)
        for b in batches:
            x = jax.random.uniform(jax.random.key(2), (plain.n_cores, b, plain.rows), minval=-1, maxval=1)
            wall, cpu = _time(read, jax.random.key(3), aged, x, repeat=5)
            out[f"read_{name}_B{b}"] = dict(wall_s=wall, cpu_s=cpu)
    einsum = jax.jit(lambda x, m: jnp.einsum("cbr,crk->cbk", x, m))
    for b in batches:
        x = jax.random.uniform(jax.random.key(2), (plain.n_cores, b, plain.rows), minval=-1, maxval=1)
        wall, cpu = _time(einsum, x, w, repeat=5)
        out[f"einsum_B{b}"] = dict(wall_s=wall, cpu_s=cpu)
    return out


def program_ratio(cores=2, r_ohm=1.0):
    """CPU seconds of ``program_chip`` and of ``at_time`` on a few cores with the exact solve."""
    cfg = pj.ChipConfig(n_cores=cores).replace(parasitics=ParasiticsConfig(r_ohm, r_ohm, method="exact"))
    w = jax.random.normal(jax.random.key(0), (cores, cfg.rows, cfg.cols)) / 16
    _, program_cpu, state = _time_once(lambda k, x: pj.program_chip(k, x, cfg), jax.random.key(0), w)
    _, age_cpu, _ = _time_once(lambda k, s: s.at_time(k, 3600.0), jax.random.key(1), state)
    return dict(cores=cores, program_cpu_s=program_cpu, at_time_cpu_s=age_cpu)


def cost(cores, batches, chip_cores=64, n=256):
    solvers = solver_cost(cores, n)
    t_op, t_prec = (x[0] for x in iteration_pieces(n))
    chip = chip_cost(batches, chip_cores)
    out = dict(cores_timed=cores, chip_cores=chip_cores, solvers=solvers, chip=chip, program=program_ratio(),
               t_cg_operator_core_s=t_op, t_cg_preconditioner_core_s=t_prec)
    setup = chip["setup_exact"]["cpu_s"]
    for b in batches:
        rd_e, rd_p = chip[f"read_exact_B{b}"]["cpu_s"], chip[f"read_plain_B{b}"]["cpu_s"]
        out[f"read_ratio_B{b}"] = rd_e / rd_p
        out[f"setup_over_read_B{b}"] = setup / rd_p
        # Reads of one state after which the exact circuit's amortised cost per read
        # (setup / N + read) is within 10x of a read without wires.
        out[f"reads_for_10x_B{b}"] = setup / max(10 * rd_p - rd_e, 1e-12)
    return out


def print_cost(c, batches):
    print(f"\nsolvers, {c['cores_timed']} core(s) of 256x256 timed, scaled to 64 (wall / CPU s):")
    for name, v in c["solvers"].items():
        print(f"  {name:<9} {v['wall_chip_s']:8.1f} / {v['cpu_chip_s']:8.1f}")
    ch = c["chip"]
    print(f"chip ({c['chip_cores']} x 256x256), ChipConfig(), r = 1 ohm per pitch (wall / CPU s):")
    for k, v in ch.items():
        print(f"  {k:<18} {v['wall_s']:10.4f} / {v['cpu_s']:10.4f}")
    for b in batches:
        print(f"  B={b}: exact read / plain read = {c[f'read_ratio_B{b}']:.2f}; setup = "
              f"{c[f'setup_over_read_B{b}']:.0f} plain reads; within 10x per read after "
              f"{c[f'reads_for_10x_B{b}']:.0f} reads of one state")
    p = c["program"]
    print(f"program_chip / at_time with the exact solve ({p['cores']} cores, CPU s): "
          f"{p['program_cpu_s']:.1f} / {p['at_time_cpu_s']:.1f}")
    print(f"one CG iteration, one core, 256 right-hand sides: operator {c['t_cg_operator_core_s']:.2f} s + "
          f"preconditioner {c['t_cg_preconditioner_core_s']:.2f} s (wall)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="8,16,32,64")
    p.add_argument("--lams", default="0.1,1,3.5,10")
    p.add_argument("--cores", type=int, default=1, help="256x256 cores timed (scaled to 64)")
    p.add_argument("--batches", default="64,256")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--chip-cores", type=int, default=64, help="cores of the chip whose setup and reads are timed")
    p.add_argument("--skip-accuracy", action="store_true", help="no ngspice comparison")
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    lams = [float(s) for s in a.lams.split(",")]
    rows = accuracy(ensure_ngspice(), sizes, lams) if not a.skip_accuracy else []
    print("| R = K | λ | r (Ω/segment) | IR drop | exact vs ngspice | first order vs ngspice |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['lam']:g} | {r['r_ohm']:.3g} | {r['ir_drop']:.3g} | {r['err_exact']:.2e} | "
              f"{r['err_first_order']:.2e} |")
    worst = max((r["err_exact"] for r in rows), default=0.0)
    result = dict(bench="irdrop", worst_exact_rel_err=worst, passed=worst < 1e-4, rows=rows)
    if not a.skip_cost:
        batches = [int(b) for b in a.batches.split(",")]
        result["cost"] = cost(a.cores, batches, a.chip_cores)
        print_cost(result["cost"], batches)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

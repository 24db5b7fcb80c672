"""IR drop: the exact crossbar solve against the circuit simulator ngspice, and its cost.

Accuracy: random arrays (R = K up to 64) with random differential inputs, over a sweep of
λ = λ_w + λ_b (the largest relative correction, PHYSICS of chip/parasitics.py); every
array is written as a SPICE netlist (drivers, wire segments, devices, ADC segments with a
0 V source as ammeter) and solved by ngspice's operating point. The column currents of
``transfer_pair`` (float32, the default) must agree within 1e-4 of the largest; the
first-order model's error is shown beside it.

Cost: the exact solve of 256×256 cores (and its gradient, forward and adjoint pass)
against a full-chip MVM (einsum of ``[64, B, 256]`` by ``[64, 256, 256]``) measured in the
same run; the exact solve is timed on ``--cores`` cores and scaled to 64 (cores are
independent: the work is linear in their number). For the iterative alternative (conjugate
gradients on the nodal system, preconditioned by the lines' tridiagonal blocks, with the
``K`` ADC drives as a batch of right-hand sides) the run times the two pieces of one
iteration on one core: the nodal operator and the preconditioner.

OpenBLAS (LAPACK behind the LU and triangular solves) is kept to one thread: with its
default threads it competes with XLA's own and, on a loaded CPU, the solve was 10-20×
slower (``OPENBLAS_NUM_THREADS`` set before anything loads it).

ngspice is installed from the Debian package when missing (``apt-get install ngspice``).

Usage: ``python benchmarks/bench_irdrop.py [--sizes 8,16,32,64] [--lams 0.1,1,3.5,10]
[--cores 1] [--batches 64,256]``; prints a table and one JSON line.
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

from pcmjax.chip.nodal import transfer_pair  # noqa: E402
from pcmjax.chip.parasitics import effective_pair  # noqa: E402


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
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


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


def cost(cores, batches, n=256, chip_cores=64):
    key = jax.random.key(0)
    g = jax.random.uniform(key, (cores, 2, n, n), maxval=20.0)
    t_exact = _time(transfer_pair, g[:, 0], g[:, 1], 1.0, 1.0, repeat=1) * chip_cores / cores
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(jnp.square(transfer_pair(a, b, 1.0, 1.0)[0]))))
    t_grad = _time(grad, g[:, 0], g[:, 1], repeat=1) * chip_cores / cores
    mvm = jax.jit(lambda x, w: jnp.einsum("cbr,crk->cbk", x, w))
    w = jax.random.normal(key, (chip_cores, n, n))
    t_op, t_prec = iteration_pieces(n)
    out = dict(cores_timed=cores, t_exact_chip_s=t_exact, t_exact_grad_chip_s=t_grad,
               t_cg_operator_core_s=t_op, t_cg_preconditioner_core_s=t_prec,
               t_exact_core_s=t_exact / chip_cores)
    for b in batches:
        x = jax.random.normal(key, (chip_cores, b, n))
        t = _time(mvm, x, w, repeat=5)
        out[f"t_mvm_B{b}_s"] = t
        out[f"ratio_B{b}"] = t_exact / t
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="8,16,32,64")
    p.add_argument("--lams", default="0.1,1,3.5,10")
    p.add_argument("--cores", type=int, default=1, help="256x256 cores timed (scaled to 64)")
    p.add_argument("--batches", default="64,256")
    p.add_argument("--skip-cost", action="store_true")
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    lams = [float(s) for s in a.lams.split(",")]
    ngspice = ensure_ngspice()
    rows = accuracy(ngspice, sizes, lams)
    print("| R = K | λ | r (Ω/segment) | IR drop | exact vs ngspice | first order vs ngspice |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['lam']:g} | {r['r_ohm']:.3g} | {r['ir_drop']:.3g} | {r['err_exact']:.2e} | "
              f"{r['err_first_order']:.2e} |")
    worst = max(r["err_exact"] for r in rows)
    result = dict(bench="irdrop", worst_exact_rel_err=worst, passed=worst < 1e-4, rows=rows)
    if not a.skip_cost:
        c = cost(a.cores, [int(b) for b in a.batches.split(",")])
        result["cost"] = c
        print(f"\nfull chip (64 x 256x256): exact solve {c['t_exact_chip_s']:.2f} s, with its gradient "
              f"{c['t_exact_grad_chip_s']:.2f} s (timed on {c['cores_timed']} core(s), scaled)")
        print(f"  one CG iteration, one core, 256 right-hand sides: operator {c['t_cg_operator_core_s']:.2f} s + "
              f"preconditioner {c['t_cg_preconditioner_core_s']:.2f} s (exact solve: {c['t_exact_core_s']:.2f} s)")
        for k, v in c.items():
            if k.startswith("t_mvm"):
                b = k[len("t_mvm_B"):-2]
                print(f"  MVM B={b}: {v * 1e3:.1f} ms, ratio exact/MVM = {c[f'ratio_B{b}']:.0f}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()

"""Write the tutorial notebooks (without outputs): ``python notebooks/generate.py``.

The notebooks are generated rather than edited by hand so that they stay small, reviewable
and output-free; ``tests/test_notebooks.py`` executes them.
"""

from __future__ import annotations

import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent

REFERENCES = """\
**References**

- M. Le Gallo et al., "A 64-core mixed-signal in-memory compute chip based on phase-change memory for deep
  neural network inference", *Nature Electronics* 6, 680–693 (2023) — the HERMES chip and its device statistics.
- S. R. Nandakumar et al., "Phase-change memory models for deep learning training and inference",
  *IEEE ICECS* 2019 — the statistical modelling method (and the PCM-like array).
- V. Joshi et al., "Accurate deep neural network inference using computational phase-change memory",
  *Nature Communications* 11, 2473 (2020) — the PCM-like model and global drift compensation.
"""


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


# ----------------------------------------------------------------------------------------
# 01: device models
# ----------------------------------------------------------------------------------------
NB1 = [
    md("""
# 01 — PCM device models

`pcmjax.devices` holds statistical models of phase-change-memory (PCM) devices. A model turns a
*target conductance* `g_T` (µS) into samples of the conductance a device actually has at a time `t`
after programming, through three laws:

1. **programming noise** — the programmed conductance misses the target;
2. **drift** — the conductance decays as a power law of time, with a device-dependent exponent ν;
3. **accumulated 1/f noise** — the conductance wanders, more the longer one waits.

This notebook compares three models:

| model | what it describes | `g_max` |
|---|---|---|
| `HermesPCM(num_devices=1)` | one device per sign of a HERMES unit cell | 10.35 µS |
| `HermesPCM(num_devices=2)` | two devices per sign, summed on the bit line | 20.7 µS |
| `PCMLike()` | a device of a 1-million-device doped-GST array | 25 µS |

The formulas and constants are in the docstrings of `pcmjax.devices` (`help(pj.devices.HermesPCM)`); each
section below states the law it plots and where it comes from.
"""),
    code("""
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import pcmjax as pj

T_START = time.perf_counter()
DEVICES = {
    "HermesPCM(1)": pj.devices.HermesPCM(num_devices=1),
    "HermesPCM(2)": pj.devices.HermesPCM(num_devices=2),
    "PCMLike": pj.devices.PCMLike(),
}
COLORS = {"HermesPCM(1)": "tab:blue", "HermesPCM(2)": "tab:orange", "PCMLike": "tab:green"}
N = 20_000  # Monte Carlo samples per conductance level
key = jax.random.key(0)
for name, dev in DEVICES.items():
    print(f"{name:13s} g_max = {float(dev.g_max):5.2f} µS   t0 = {float(dev.t0):5.0f} s   "
          f"t_read = {float(dev.t_read) * 1e9:.0f} ns")
"""),
    md("""
## 1. Programming noise

Programming misses the target by a Gaussian error whose standard deviation depends on the target:

$$\\sigma_\\text{prog}(g_T) = \\sum_i c_i \\left(\\frac{g_T}{g_\\max}\\right)^i, \\qquad
g_\\text{prog} = \\max(g_T + \\sigma_\\text{prog}\\,\\xi,\\ 0), \\quad \\xi \\sim \\mathcal N(0, 1).$$

The polynomial coefficients of the HERMES models were fitted to the devices of the HERMES chip
(Le Gallo et al. 2023), following the statistical method of Nandakumar et al. (2019); the PCM-like
coefficients come from the 1-million-device array of Nandakumar et al. (2019) used by Joshi et al. (2020).
Lines: the law (`dev.prog_sigma`); markers: the standard deviation of `dev.program` samples (the
floor at 0 µS makes it smaller than the law near `g_T = 0`).
"""),
    code("""
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
levels = np.linspace(0.0, 1.0, 9)
for i, (name, dev) in enumerate(DEVICES.items()):
    g_max = float(dev.g_max)
    g = jnp.linspace(0.0, g_max, 200)
    sigma = dev.prog_sigma(g)
    targets = jnp.repeat(jnp.asarray(levels * g_max, jnp.float32)[:, None], N, axis=1)
    samples = dev.program(jax.random.fold_in(key, i), targets)
    emp = jnp.std(samples, axis=1)
    axes[0].plot(g, sigma, color=COLORS[name], label=f"{name} (law)")
    axes[0].plot(levels * g_max, emp, "o", color=COLORS[name], ms=4, label=f"{name} (samples)")
    axes[1].plot(g[1:] / g_max, 100 * sigma[1:] / g_max, color=COLORS[name], label=name)
axes[0].set(xlabel="target conductance $g_T$ (µS)", ylabel="$\\\\sigma_{prog}$ (µS)",
            title="programming noise")
axes[1].set(xlabel="normalised target $g_T / g_{max}$", ylabel="$\\\\sigma_{prog} / g_{max}$ (%)",
            title="programming noise relative to $g_{max}$")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
"""),
    md("""
## 2. Drift

After programming, the amorphous phase relaxes and the conductance decays as a power law:

$$g_d(t) = g_\\text{prog} \\left(\\frac{t + t_0}{t_0}\\right)^{-\\nu}, \\qquad \\nu = |\\mu_\\nu + \\sigma_\\nu \\xi|,$$

where `t0` is the first read after programming. The mean μ_ν and spread σ_ν of the drift exponent
depend on the target conductance (low-conductance, more amorphous states drift faster): for the HERMES
models a clipped logarithm below a threshold and a polynomial above it (Le Gallo et al. 2023); for the
PCM-like model a clipped logarithm (Nandakumar et al. 2019; Joshi et al. 2020). The exponent is drawn once
per device at programming (`dev.drift_exponent`). Lines: μ_ν and σ_ν of the law (`dev.nu_moments`);
markers: mean and standard deviation of the samples (the absolute value folds the few negative draws).
"""),
    code("""
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for i, (name, dev) in enumerate(DEVICES.items()):
    g_max = float(dev.g_max)
    g = jnp.linspace(0.005 * g_max, g_max, 200)
    mu, sd = dev.nu_moments(g)
    lv = jnp.asarray(levels[1:] * g_max, jnp.float32)
    nu = dev.drift_exponent(jax.random.fold_in(key, 10 + i), jnp.repeat(lv[:, None], N, axis=1))
    axes[0].plot(g, mu, color=COLORS[name], label=f"{name} (law)")
    axes[0].plot(lv, nu.mean(axis=1), "o", color=COLORS[name], ms=4, label=f"{name} (samples)")
    axes[1].plot(g, sd, color=COLORS[name], label=f"{name} (law)")
    axes[1].plot(lv, nu.std(axis=1), "o", color=COLORS[name], ms=4, label=f"{name} (samples)")
axes[0].set(xlabel="target conductance $g_T$ (µS)", ylabel="mean drift exponent $\\\\mu_\\\\nu$ (1)",
            title="drift exponent: mean")
axes[1].set(xlabel="target conductance $g_T$ (µS)", ylabel="drift exponent spread $\\\\sigma_\\\\nu$ (1)",
            title="drift exponent: standard deviation")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
"""),
    md("""
## 3. Accumulated 1/f noise

On top of drift, the conductance fluctuates with a 1/f spectrum. Integrated from the first read to
`t`, the relative standard deviation grows slowly with time:

$$\\sigma_n(t) = Q_s(g)\\sqrt{\\ln\\frac{t + t_0 + t_\\text{read}}{2\\,t_\\text{read}}}, \\qquad
g(t) = \\max\\big(g_d(t) + |g_d(t)|\\,\\sigma_n(t)\\,\\xi,\\ 0\\big).$$

The amplitude `Q_s` is again a clipped logarithm / polynomial of the conductance for HERMES
(Le Gallo et al. 2023) and a power law for the PCM-like device (Nandakumar et al. 2019; Joshi et al. 2020).
`pcmjax` evaluates `Q_s` at the programmed conductance by default (as IBM aihwkit's code does);
`q_s_from="target"` selects the documented alternative. The same law, over the short interval between two
reads, gives the fresh per-read noise of every MVM (`dev.read_sigma`).
"""),
    code("""
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
t_axis = np.logspace(0, np.log10(365.25 * 86400), 100)
for name, dev in DEVICES.items():
    g_max = float(dev.g_max)
    g = jnp.linspace(0.01 * g_max, g_max, 200)
    axes[0].plot(g / g_max, dev.q_s(g), color=COLORS[name], label=name)
    sig = dev.q_s(jnp.asarray(0.5 * g_max)) * dev.noise_sigma(jnp.asarray(t_axis, jnp.float32))
    axes[1].semilogx(t_axis, 100 * sig, color=COLORS[name], label=name)
axes[0].set(xlabel="normalised conductance $g / g_{max}$", ylabel="$Q_s$ (1)", title="1/f noise amplitude")
axes[1].set(xlabel="time after programming $t$ (s)", ylabel="$\\\\sigma_n(t)$ at $g = g_{max}/2$ (%)",
            title="accumulated relative 1/f noise")
for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
"""),
    md("""
## 4. Conductance distributions over time

Putting the three laws together: for four target levels (10 %, 30 %, 60 % and 90 % of `g_max`) we program
`N` devices, draw their drift exponents once, and read them 1 s, 1 hour, 1 day and 1 year after
programming (`dev.at_time`). Dashed lines mark the targets. The distributions broaden (programming and
1/f noise) and slide towards lower conductance (drift) — most visibly for the low levels, which drift
fastest.
"""),
    code("""
TIMES = {"1 s": 1.0, "1 hour": 3600.0, "1 day": 86400.0, "1 year": 365.25 * 86400.0}
FRACTIONS = (0.1, 0.3, 0.6, 0.9)
LEVEL_COLORS = plt.cm.viridis(np.linspace(0.0, 0.85, len(FRACTIONS)))
fig, axes = plt.subplots(len(DEVICES), len(TIMES), figsize=(15, 9), sharey="row")
for r, (name, dev) in enumerate(DEVICES.items()):
    g_max = float(dev.g_max)
    g_t = jnp.repeat(jnp.asarray(FRACTIONS, jnp.float32)[:, None] * g_max, N, axis=1)
    k_prog, k_nu, k_t = jax.random.split(jax.random.fold_in(key, 100 + r), 3)
    g_prog = dev.program(k_prog, g_t)
    nu = dev.drift_exponent(k_nu, g_t)
    bins = np.linspace(0.0, 1.15 * g_max, 120)
    for c, (label, t) in enumerate(TIMES.items()):
        ax = axes[r, c]
        g_now = np.asarray(dev.at_time(jax.random.fold_in(k_t, c), g_prog, nu, t))
        for j, f in enumerate(FRACTIONS):
            ax.hist(g_now[j], bins=bins, density=True, histtype="stepfilled", alpha=0.45,
                    color=LEVEL_COLORS[j], label=f"$g_T$ = {f * g_max:.1f} µS")
            ax.axvline(f * g_max, color=LEVEL_COLORS[j], ls="--", lw=1)
        ax.set_title(f"{name}, t = {label}")
        ax.set_xlabel("conductance $g(t)$ (µS)")
        if c == 0:
            ax.set_ylabel("probability density (1/µS)")
        ax.grid(alpha=0.3)
    axes[r, 0].legend(fontsize=8)
fig.tight_layout()
plt.show()
"""),
    md("""
The same data as a function of time: the median and the 5–95 % band of `g(t)` for a device programmed
to half of `g_max`, normalised by the target.
"""),
    code("""
fig, ax = plt.subplots(figsize=(7, 4))
t_grid = np.logspace(0, np.log10(365.25 * 86400), 25)
for r, (name, dev) in enumerate(DEVICES.items()):
    g_t = jnp.full((5_000,), 0.5 * float(dev.g_max), jnp.float32)
    k_prog, k_nu, k_t = jax.random.split(jax.random.fold_in(key, 200 + r), 3)
    g_prog, nu = dev.program(k_prog, g_t), dev.drift_exponent(k_nu, g_t)
    g_now = dev.at_time(k_t, g_prog, nu, jnp.asarray(t_grid, jnp.float32)[:, None]) / g_t
    lo, med, hi = np.percentile(np.asarray(g_now), [5, 50, 95], axis=1)
    ax.fill_between(t_grid, lo, hi, color=COLORS[name], alpha=0.2)
    ax.semilogx(t_grid, med, color=COLORS[name], label=f"{name}: median, 5–95 %")
ax.set(xlabel="time after programming $t$ (s)", ylabel="$g(t) / g_T$ (1)",
       title="drift and spread of a device programmed to $g_{max}/2$")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)
plt.show()
print(f"notebook ran in {time.perf_counter() - T_START:.1f} s")
"""),
    md(REFERENCES),
]

# ----------------------------------------------------------------------------------------
# 02: chip MVM
# ----------------------------------------------------------------------------------------
NB2 = [
    md("""
# 02 — MVM on a simulated HERMES chip

This notebook programs random weights onto a simulated HERMES-class chip and measures how well its
matrix-vector products (MVMs) match the exact `x @ W`:

1. programming a chip and reading it at a time `t` (`pj.program_chip`, `state.at_time`, `pj.mvm`);
2. the MVM error from 1 s to 1 year after programming, with and without drift compensation;
3. the error caused by each non-ideality alone (`cfg.only(name)` for every name in `pj.NONIDEALITIES` that
   the configuration has on);
4. one-phase versus four-phase reads;
5. `jax.grad` through programming, ageing and the MVM.

To stay quick on a CPU it simulates 2 of the chip's 64 cores (every core is an independent 256×256
crossbar, so errors per core do not depend on how many are simulated) and small batches. Every
`ChipConfig` is static under `jit`, so each configuration studied below compiles once; with arrays this
small, compiling dominates the run time, and the first cell asks XLA for a lower optimisation level,
which compiles about twice as fast. Drop that line for long studies.
"""),
    code("""
import os

# Many small configurations: compile time dominates, so trade XLA optimisation for compile speed.
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"

import time
from functools import partial

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import pcmjax as pj

T_START = time.perf_counter()
CORES, BATCH, INSTANCES = 2, 32, 3
YEAR = 365.25 * 86400.0
key = jax.random.key(0)
k_w, k_x, k_chip = jax.random.split(key, 3)
cfg = pj.ChipConfig()  # HERMES defaults: 256×256 cores, 8-bit PWM, CCO ADC, global drift compensation
dev = pj.devices.HermesPCM(num_devices=2)
# Gaussian weights (like a trained layer) and inputs uniform in [-1, 1].
W = jax.random.normal(k_w, (CORES, cfg.rows, cfg.cols)) / np.sqrt(cfg.rows)
x = jax.random.uniform(k_x, (CORES, BATCH, cfg.rows), minval=-1.0, maxval=1.0)
exact = jnp.einsum("cbr,crk->cbk", x, W)
print(cfg)
"""),
    md("""
## 1. Program a chip and read it

`pj.program_chip` maps each core's weights to target conductances (`G⁺ − G⁻ ∝ W`, scaled by the core's
largest |w|), programs them with the device model's programming noise, draws the drift exponents and this
chip instance's ADC mismatch, and records the drift-compensation reference read. `state.at_time(key, t)`
ages the chip to `t` seconds after programming; `pj.mvm` runs the PWM → crossbar → ADC → digital-unit
pipeline on every core at once.
"""),
    code("""
k_prog, k_age, k_read = jax.random.split(k_chip, 3)
state = pj.program_chip(k_prog, W, cfg, dev)
print("programmed conductances [cores, sign, rows, cols]:", state.g_prog.shape)
y = pj.mvm(k_read, state.at_time(k_age, 3600.0), x)
print("outputs [cores, batch, cols]:", y.shape)
print(f"relative error 1 hour after programming: {float(jnp.linalg.norm(y - exact) / jnp.linalg.norm(exact)):.3f}")

fig, ax = plt.subplots(figsize=(7, 4))
for t, label in ((1.0, "1 s"), (YEAR, "1 year")):
    g = np.asarray(state.conductances(k_age, t))
    ax.hist(g[:, 0][np.asarray(state.g_target[:, 0]) > 0], bins=100, histtype="step", density=True,
            label=f"positive-side devices, t = {label}")
ax.set(xlabel="conductance (µS, two devices summed)", ylabel="probability density (1/µS)",
       title="programmed conductances of the chip")
ax.grid(alpha=0.3)
ax.legend()
plt.show()
"""),
    md("""
For the studies below, one jitted function programs `INSTANCES` independent chips (a `vmap` over keys)
and reads each at several times. A `ChipConfig` is static under `jit`: each new configuration compiles once.
"""),
    code("""
@partial(jax.jit, static_argnames="cfg")
def read_chips(keys, W, x, times_s, cfg):
    \"\"\"Outputs [instances, times, cores, batch, cols] of chips programmed with `keys`.\"\"\"
    def one_chip(k):
        k_prog, k_time = jax.random.split(k)
        st = pj.program_chip(k_prog, W, cfg, dev)
        def one_time(args):
            i, t = args
            k_age, k_read = jax.random.split(jax.random.fold_in(k_time, i))
            return pj.mvm(k_read, st.at_time(k_age, t), x)
        return jax.lax.map(one_time, (jnp.arange(times_s.shape[0]), times_s))
    return jax.vmap(one_chip)(keys)


def rel_error(y):
    \"\"\"‖y − xW‖ / ‖xW‖ over cores and batch, per leading index: [instances, times].\"\"\"
    return np.asarray(jnp.linalg.norm((y - exact).reshape(*y.shape[:2], -1), axis=-1) / jnp.linalg.norm(exact))


keys = jax.random.split(k_chip, INSTANCES)
# One time grid for every study (log-spaced, including 1 s, 1 hour, 1 day, 1 month and 1 year), so a
# configuration that appears in several studies compiles only once.
NAMED = {"1 s": 1.0, "1 hour": 3600.0, "1 day": 86400.0, "1 month": 30 * 86400.0, "1 year": YEAR}
times = np.unique(np.concatenate([np.logspace(0, np.log10(YEAR), 8), list(NAMED.values())])).astype(np.float32)
idx = {label: int(np.argmin(np.abs(times - t))) for label, t in NAMED.items()}
print("times (s):", times)
"""),
    md("""
## 2. Error over time, with and without drift compensation

Without compensation, drift shrinks every conductance and therefore every output: the error grows with
time. Global drift compensation (Joshi et al., Nat. Commun. 2020) reads a fixed reference input right after
programming and again at `t`, and rescales each core's outputs by the ratio (`"global"`; `"column"` would use
one ratio per column). What remains is the *spread* of drift exponents and the accumulated noise.
"""),
    code("""
errors, outputs = {}, {}
for mode in ("none", "global"):
    ys = read_chips(keys, W, x, jnp.asarray(times), cfg.replace(drift_compensation=mode))
    errors[mode], outputs[mode] = rel_error(ys), ys

fig, ax = plt.subplots(figsize=(8, 4.5))
for mode, e in errors.items():
    ax.errorbar(times, 100 * e.mean(0), yerr=100 * e.std(0), marker="o", ms=4, capsize=2,
                label=f"drift_compensation='{mode}'")
for label, t in list(NAMED.items())[1:]:
    ax.axvline(t, color="gray", lw=0.8, ls=":")
    ax.text(t, ax.get_ylim()[0], f" {label}", ha="right", va="bottom", fontsize=8, rotation=90)
ax.set(xscale="log", xlabel="time after programming (s)", ylabel="relative MVM error ‖y − xW‖/‖xW‖ (%)",
       title=f"HERMES chip, HermesPCM(2), mean ± std over {INSTANCES} chips")
ax.grid(alpha=0.3)
ax.legend()
plt.show()
print(f"{'':8s}" + "".join(f"{label:>10s}" for label in NAMED))
for mode, e in errors.items():
    print(f"{mode:>8s}" + "".join(f"{100 * e.mean(0)[i]:8.2f} %" for i in idx.values()))
"""),
    code("""
fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharey=True)
ref = np.asarray(exact).ravel()
for ax, mode in zip(axes, ("none", "global")):
    for label in ("1 s", "1 year"):
        i = idx[label]
        ax.plot(ref, np.asarray(outputs[mode][0, i]).ravel(), ".", ms=1.5, alpha=0.4, label=f"t = {label}")
    lim = np.abs(ref).max()
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=1, label="y = xW")
    ax.set(xlabel="exact output xW (weight units)", title=f"drift_compensation='{mode}'")
    ax.grid(alpha=0.3)
    ax.legend(markerscale=6)
axes[0].set_ylabel("chip output y (weight units)")
fig.tight_layout()
plt.show()
"""),
    md("""
## 3. Each non-ideality alone

`cfg.only(name)` keeps one non-ideality of the configuration and switches all the others off (drift
compensation stays as configured, here `"global"`), so each bar is the error that one effect causes on
its own, at 1 s and 1 day after programming. Note that `drift` alone still leaves an error that grows with
time although global compensation is on: compensation removes one common factor per core, not the
spread of ν between devices and conductance levels.
"""),
    code("""
# (faults, IR drop and temperature are off in the HERMES defaults: nothing to show alone)
cases = {name: cfg.only(name) for name in pj.NONIDEALITIES if cfg.without(name) != cfg}
cases["all (HERMES defaults)"] = cfg
ablation = {}
for name, c in cases.items():
    e = rel_error(read_chips(keys, W, x, jnp.asarray(times), c)).mean(0)
    ablation[name] = (e[idx["1 s"]], e[idx["1 day"]])
    print(f"{name:24s} {100 * ablation[name][0]:8.3f} % at 1 s {100 * ablation[name][1]:8.3f} % at 1 day")

fig, ax = plt.subplots(figsize=(9, 5.5))
names = list(ablation)
pos = np.arange(len(names))
floor = 1e-4  # show exact zeros on the log axis
for j, (label, shift) in enumerate((("t = 1 s", -0.2), ("t = 1 day", 0.2))):
    ax.barh(pos + shift, [100 * max(ablation[n][j], floor) for n in names], height=0.4, label=label)
ax.set_yticks(pos, names)
ax.set(xscale="log", xlabel="relative MVM error (%)", title="error caused by each non-ideality alone")
ax.invert_yaxis()
ax.grid(alpha=0.3, axis="x")
ax.legend()
fig.tight_layout()
plt.show()
"""),
    md("""
## 4. One-phase versus four-phase reads

In one-phase mode positive and negative inputs are applied in one window, and the two current paths have
slightly different gains (`polarity_asymmetry`). Four-phase mode converts the four combinations
(±input × ±weight) separately and combines the counts digitally: the asymmetry cancels, at the price of
four conversions' ADC noise and offset and about four times the latency (Le Gallo et al. 2023). Which
mode is more accurate therefore depends on how large the asymmetry is compared with the ADC noise.
"""),
    code("""
phase_cases = {
    "1-phase, asymmetry 0.01": cfg,
    "1-phase, asymmetry 0.05": cfg.replace(polarity_asymmetry=0.05),
    "4-phase (asymmetry cancels)": cfg.replace(read_phases=4),
}
labels = ["1 s", "1 day", "1 year"]
phases = {}
for name, c in phase_cases.items():
    phases[name] = rel_error(read_chips(keys, W, x, jnp.asarray(times), c))[:, [idx[lab] for lab in labels]]
    print(f"{name:28s}" + "".join(f"{100 * e:8.2f} %" for e in phases[name].mean(0)))

fig, ax = plt.subplots(figsize=(8, 4))
width = 0.8 / len(phases)
for j, (name, e) in enumerate(phases.items()):
    ax.bar(np.arange(3) + (j - 1) * width, 100 * e.mean(0), yerr=100 * e.std(0), width=width, capsize=3,
           label=name)
ax.set_xticks(np.arange(3), labels)
ax.set(xlabel="time after programming", ylabel="relative MVM error (%)", title="one- vs four-phase reads")
ax.grid(alpha=0.3, axis="y")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
"""),
    md("""
## 5. Gradients through the chip

Programming, ageing and the MVM are differentiable: noise is reparameterised, and the quantisers (PWM,
ADC) pass gradients straight through inside their range. Here a squared-error loss of the chip's outputs
one day after programming is differentiated with respect to the weights, the inputs and the device-model
parameters in one `jax.grad`. The cosine similarity with the gradients of the exact `x @ W` shows how
closely the chip's weight and input gradients follow the ideal ones; the device gradients say how the loss
reacts to scaling the programming noise, the drift exponents and the 1/f noise.
"""),
    code("""
target = 0.5 * exact + 0.1


def chip_loss(W, x, dev):
    st = pj.program_chip(k_prog, W, cfg, dev).at_time(k_age, 86400.0)
    return jnp.mean((pj.mvm(k_read, st, x) - target) ** 2)


def exact_loss(W, x):
    return jnp.mean((jnp.einsum("cbr,crk->cbk", x, W) - target) ** 2)


loss, (gW, gx, gdev) = jax.value_and_grad(chip_loss, argnums=(0, 1, 2))(W, x, dev)
eW, ex = jax.grad(exact_loss, argnums=(0, 1))(W, x)


def cosine(a, b):
    return float(jnp.vdot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


print(f"chip loss {float(loss):.5f}, exact loss {float(exact_loss(W, x)):.5f}")
print(f"cosine(grad_W chip, grad_W exact) = {cosine(gW, eW):.4f}")
print(f"cosine(grad_x chip, grad_x exact) = {cosine(gx, ex):.4f}")
print("all gradients finite:", all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves((gW, gx, gdev))))
for name in ("prog_scale", "drift_scale", "read_noise_scale"):
    print(f"d loss / d {name:16s} = {float(getattr(gdev, name)):+.3e}")

fig, ax = plt.subplots(figsize=(5, 5))
ax.plot(np.asarray(ex).ravel(), np.asarray(gx).ravel(), ".", ms=1, alpha=0.4)
lim = float(jnp.abs(ex).max())
ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
ax.set(xlabel="∂loss/∂x, exact x @ W", ylabel="∂loss/∂x, through the chip", title="input gradients")
ax.ticklabel_format(style="sci", scilimits=(0, 0))
ax.grid(alpha=0.3)
plt.show()
print(f"notebook ran in {time.perf_counter() - T_START:.1f} s")
"""),
    md(REFERENCES),
]


# ----------------------------------------------------------------------------------------
# 06: programming, parasitics, faults, temperature and cost
# ----------------------------------------------------------------------------------------
NB6 = [
    md("""
# 06 — Programming, parasitics, faults, temperature and cost

Beyond the device statistics of notebooks 01–02, a deployed HERMES-class chip also meets:

1. **how the weights are written** — one-shot, program-and-verify as HERMES does it (`pcmjax.chip.verify`),
   or *gradient-based programming* (GDP), which picks the programming targets that minimise the MVM error
   after drift instead of each device's own error (`pcmjax.chip.gdp`);
2. **wire resistance** — IR drop along input lines and bit lines (`pcmjax.chip.parasitics`);
3. **device faults** — stuck-at-SET / stuck-at-RESET devices and dead columns (`pcmjax.chip.faults`);
4. **temperature** — conductance, drift exponent and read noise away from room temperature
   (`pcmjax.chip.temperature`);
5. **cost** — cores, MVMs, latency, energy and TOPS/W of a network, from the published HERMES figures
   (`pcmjax.cost`).

Every effect is off by default (`ChipConfig()` is unchanged) and switched on by one field of `ChipConfig`.
The arrays here are small so that the notebook runs in a minute or two on a laptop CPU.
"""),
    code("""
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import pcmjax as pj
from pcmjax import cost
from pcmjax.chip import FaultConfig, apply_faults
from pcmjax.chip.gdp import GDPConfig
from pcmjax.chip.mapping import map_weights
from pcmjax.chip.nodal import transfer_pair
from pcmjax.chip.parasitics import effective_pair, kb, kw, nodal_solve
from pcmjax.chip.temperature import at_temperature
from pcmjax.chip.verify import program_verify
from pcmjax.devices import HermesPCM
"""),
    md("""
## 1. What a network costs on the chip

The cost model takes, per analog layer, its matrix size, the MVMs it runs per inference (one for a dense
layer, one per output pixel for a convolution) and the cores it occupies, and charges each MVM the latency
and per-core energy of Table I of Le Gallo et al. (*Nature Electronics* 2023): 133 ns and 0.86 µJ / 64 per
core in one-phase mode, 520 ns and 3.38 µJ / 64 in four-phase mode (the mode of the published accuracies).
First, the model reproduces the 64-core rows of Table I:
"""),
    code("""
for phases in (1, 4):
    c = cost.mvm_cost(cores_used=64, utilisation=1.0, read_phases=phases)
    print(f"{phases}-phase: {c['tops']:.1f} TOPS, {c['tops_per_w']:.2f} TOPS/W, {c['tops_per_mm2']:.2f} TOPS/mm², "
          f"{c['energy_uj']:.2f} µJ, {c['latency_ns']:.0f} ns")
"""),
    md("""
A small CIFAR-sized network (three convolutions and a classifier); `cost.report` is the text that
`pcmjax info --network` prints beside the accuracy study:
"""),
    code("""
net = [
    cost.conv2d("conv1", 3, 32, 3, (32, 32)),
    cost.conv2d("conv2", 32, 64, 3, (16, 16)),
    cost.conv2d("conv3", 64, 128, 3, (8, 8)),
    cost.dense("fc", 128 * 4 * 4, 10),
]
print(cost.report(net, read_phases=4, accuracy={"software": 0.91, "chip, 1 day": 0.89}, title="small CNN"))
"""),
    md("""
## 2. Program-and-verify as HERMES does it

The HERMES-fitted programming noise σ_prog(g_T) of notebook 01 is not a property of a single write: it is the
measured *outcome* of HERMES's program-and-verify. `ProgramConfig(method="verify")` simulates that loop with
HERMES's own parameters — verify reads in ADC counts (one device's share of `g_max` is 80 counts), stop when
the integer read is within 5 counts of the target, at most 30 iterations, the device model's 1/f read noise over
the 512 ns verify read, the two-device strategy — and a pulse response whose spread grows with conductance and
partly develops after the verify read (relaxation the loop cannot see). Those last parameters are calibrated
(`benchmarks/calibrate_verify.py`) so that the loop reproduces the fitted law. Below, 4,000 polarities per
level are programmed by the loop and compared with σ_prog, for one and two devices per sign; the dotted line is
the spread the tolerance band alone would leave (uniform over ±4 counts).
"""),
    code("""
levels = np.round(np.linspace(0.1, 1.0, 10), 2)
verify_cfg = pj.ChipConfig(program=pj.ProgramConfig(method="verify"))
run_verify = jax.jit(program_verify, static_argnames="cfg")
plt.figure(figsize=(5.5, 3.8))
for n, colour in ((1, "C0"), (2, "C1")):
    dev = HermesPCM(num_devices=n)
    g_max = float(dev.g_max)
    g_t = jnp.asarray(np.repeat(levels[:, None] * g_max, 4000, axis=1), jnp.float32)
    g = run_verify(jax.random.key(n), g_t, dev, cfg=verify_cfg)
    sim = np.asarray(jnp.std(g - g_t, axis=1)) / g_max
    fitted = np.asarray(dev.prog_sigma(g_t[:, 0])) / g_max
    band = 9.0 / np.sqrt(12.0) / (80.0 * n)  # ±4.5 counts, uniform, over G_max = 80 n counts
    plt.plot(levels, 100 * fitted, "-", color=colour, label=f"fitted σ_prog, {n} device(s)")
    plt.plot(levels, 100 * sim, "o", color=colour, label=f"simulated loop, {n} device(s)")
    plt.axhline(100 * band, color=colour, ls=":", lw=1)
    print(f"{n} device(s): simulated / fitted = " + " ".join(f"{r:.2f}" for r in sim / fitted))
plt.xlabel("target g_T / g_max"); plt.ylabel("σ(G − G_T) / g_max (%)"); plt.ylim(0, None)
plt.legend(fontsize=8); plt.grid(alpha=0.3); plt.title("program-and-verify against the HERMES fit")
plt.tight_layout(); plt.show()
"""),
    md("""
The simulated loop follows the fitted law within 10 % at every level (`tests/test_verify.py` checks it with
16,000 polarities per level). Expressed per iterated device, the two curves are one law: below about 0.65 `g_max`
a two-device cell iterates a single device, at twice the counts per `g_max`. The tolerance band explains only the
lowest levels; the rest is relaxation after the last verify read. Because the loop reproduces the fitted noise,
a chip programmed with it has the spread of the fitted one-shot model; it differs in the shape of the
distribution (bounded by the band where relaxation is small) and in the two-device strategy.

## 3. Gradient-based programming (GDP)

`ProgramConfig(method="gdp")` first chooses the per-sign programming targets by Adam on the expected MVM
error `E ‖x · (α(t) G(t)/g_max − W*)‖²` — programming noise, drift and accumulated noise sampled with the
reparameterisation trick, `α(t)` the chip's drift compensation — then writes them with one-shot programming
(or program-and-verify, `GDPConfig(write="verify")`). The optimiser knows only the device *statistics*, so it
corrects what is systematic: above all, low-conductance devices drift faster than high ones, which global
compensation cannot undo. Below, the same weights and keys are programmed three ways and the array's relative
weight error (the MVM error on random inputs without the periphery) is measured at 1 s, 1 h and 1 day.
"""),
    code("""
C, R, K = 1, 64, 64
k_w, k_p, k_t = jax.random.split(jax.random.key(0), 3)
W = jax.random.normal(k_w, (C, R, K))
base = pj.ChipConfig(n_cores=C, rows=R, cols=K)
gdp = GDPConfig(steps=150, samples=2, times_s=(1.0, 3600.0, 86400.0))
methods = {
    "one-shot": base,
    "program-and-verify": base.set("program.method", "verify"),
    "GDP (one-shot write)": base.set("program.method", "gdp").set("program.gdp", gdp),
}
times = (1.0, 3600.0, 86400.0)

def array_error(state, t, repeats=3):
    w_n = W / state.w_max
    errs = []
    for r in range(repeats):
        s = state.at_time(jax.random.fold_in(k_t, r), t)
        errs.append(float(jnp.linalg.norm(s.w[:, 0] * s.comp[:, None, :] - w_n) / jnp.linalg.norm(w_n)))
    return np.mean(errs)

table = {}
for name, cfg in methods.items():
    state = pj.program_chip(k_p, W, cfg)
    table[name] = [array_error(state, t) for t in times]
    print(f"{name:<22}" + "".join(f"  {e:.4f}" for e in table[name]))
ratios = [a / b for a, b in zip(table["GDP (one-shot write)"], table["one-shot"])]
print("GDP / one-shot:       " + "".join(f"  {r:.3f}" for r in ratios))
"""),
    md("""
GDP gains a few per cent against one-shot programming at 1 day and gives a little back at 1 s: it trades
error at short times for error at long times, and it cannot remove programming noise, which only a closed loop
measures — and HERMES's closed loop leaves the spread of section 2, which the fitted one-shot model already
draws, so program-and-verify and one-shot programming give similar errors here. `benchmarks/bench_gdp.py`
measures the full-size figures (one 256×256 core, the whole MVM pipeline) recorded in `benchmarks/RESULTS.md`.

## 4. IR drop

Each cell pitch of an input line and of a bit line adds a series resistance. The network is linear, so for
any input the column currents are `Vᵀ W_eff` with an input-independent effective matrix; the first-order
model computes it with cumulative sums (`pcmjax.chip.parasitics`). Here it is compared with an exact nodal
solve of a 16×16 array (float64) as the wire resistance grows; `λ` is the largest relative correction.
"""),
    code("""
rng = np.random.default_rng(0)
w = rng.uniform(-1, 1, (16, 16))
gp, gn, v = np.maximum(w, 0) * 20.7, np.maximum(-w, 0) * 20.7, rng.uniform(-1, 1, 16)
ideal = v @ (gp - gn)
rs = np.geomspace(1, 300, 9)
rows = []
with jax.enable_x64(True):
    for r in rs:
        exact = np.asarray(nodal_solve(gp, gn, v, r, r))
        lam = r * 1e-6 * (float(jnp.max(kw(jnp.asarray(gp))[:, -1])) + float(jnp.max(kb(jnp.asarray(gp + gn))[0])))
        errs = []
        for it in (1, 3):
            ep, en = effective_pair(jnp.asarray(gp), jnp.asarray(gn), r, r, it)
            errs.append(np.max(np.abs(v @ np.asarray(ep - en) - exact)) / np.max(np.abs(ideal)))
        drop = np.max(np.abs(exact - ideal)) / np.max(np.abs(ideal))
        rows.append((lam, drop, *errs))
rows = np.array(rows)
plt.figure(figsize=(5, 3.5))
plt.loglog(rows[:, 0], rows[:, 1], "k-", label="IR drop itself")
plt.loglog(rows[:, 0], rows[:, 2], "o-", label="first-order model error")
plt.loglog(rows[:, 0], rows[:, 3], "s-", label="3 iterations")
plt.xlabel("λ = λ_w + λ_b"); plt.ylabel("max error / max |output|"); plt.legend(); plt.grid(alpha=0.3)
plt.title("16×16 array against a nodal solve"); plt.tight_layout(); plt.show()
"""),
    md("""
The first-order model's error is about `λ²/5`: under 1 % of the output while the IR drop itself stays under
about 10 % (`λ ≲ 0.2`). A few fixed-point iterations extend the range; past `λ ≈ 3` the series diverges.
On the chip, `ChipConfig(parasitics=ParasiticsConfig(r_word_line=..., r_bit_line=...))` applies it to every
core at once, and GDP's loss sees it, so GDP targets also pre-compensate the IR drop.

### The exact circuit

`ParasiticsConfig(method="exact")` replaces the expansion by the exact solution of every core's whole network
(both input lines of every row, the bit lines, the driver and ADC segments; `pcmjax.chip.nodal.transfer_pair`): a
direct block elimination, valid at any wire resistance, agreeing with the circuit simulator ngspice within 2e-5
(`benchmarks/bench_irdrop.py`). Below, the same 16×16 array in float32 over a wider range, against the float64 nodal
solve: the exact solve stays at float32 rounding where the expansion is off by more than the output itself, and the
column currents at λ ≈ 5 show why (right).
"""),
    code("""
rs_wide = np.geomspace(1, 3000, 12)
lam_wide, err_exact, err_first, drop_wide, cols_at = [], [], [], [], None
g32 = (jnp.asarray(gp, jnp.float32), jnp.asarray(gn, jnp.float32))
nodal64 = jax.jit(nodal_solve)  # compiled once for the sweep
for r in rs_wide:
    with jax.enable_x64(True):
        ref = np.asarray(nodal64(gp, gn, v, r, r))
    ap, an = transfer_pair(*g32, r, r)  # float32, the default
    fp, fn = effective_pair(*g32, r, r)
    exact_i, first_i = v @ np.asarray(ap - an, np.float64), v @ np.asarray(fp - fn, np.float64)
    lam = r * 1e-6 * (float(jnp.max(kw(g32[0])[:, -1])) + float(jnp.max(kb(g32[0] + g32[1])[0])))
    lam_wide.append(lam); drop_wide.append(np.max(np.abs(ref - ideal)) / np.max(np.abs(ideal)))
    err_exact.append(np.max(np.abs(exact_i - ref)) / np.max(np.abs(ref)))
    err_first.append(np.max(np.abs(first_i - ref)) / np.max(np.abs(ref)))
    if cols_at is None and lam > 5:
        cols_at = (lam, ref, exact_i, first_i)
fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
a1.loglog(lam_wide, drop_wide, "k-", label="IR drop itself")
a1.loglog(lam_wide, err_first, "o-", label="first-order model")
a1.loglog(lam_wide, err_exact, "s-", label="exact solve (float32)")
a1.set_xlabel("λ = λ_w + λ_b"); a1.set_ylabel("max error / max |output|"); a1.legend(fontsize=8); a1.grid(alpha=0.3)
a1.set_title("against a float64 nodal solve")
lam, ref, exact_i, first_i = cols_at
a2.plot(ideal, "k:", label="no wires"); a2.plot(ref, "k-", lw=3, alpha=0.3, label="float64 nodal solve")
a2.plot(exact_i, "s", ms=4, label="exact solve"); a2.plot(first_i, "o", ms=4, label="first-order model")
a2.set_xlabel("column"); a2.set_ylabel("column current (V·µS)"); a2.set_title(f"λ = {lam:.1f}")
a2.legend(fontsize=8); a2.grid(alpha=0.3); plt.tight_layout(); plt.show()
print(f"largest error of the exact solve: {max(err_exact):.1e} of the output")
"""),
    md("""
What does that mean for a real layer? A 3×3 convolution of ResNet-9 (`pnn.ResNet9`, `layer1`: 56 → 112 channels,
504 rows) fills a core with its first 252 rows and 112 columns. Its He-initialised weights are mapped as the chip
maps them and read with 64 post-ReLU-like inputs (uniform in [0, 1]). The MVM error against the ideal `x W` grows
with the wire resistance per cell pitch; one gain per column (what drift compensation and the digital unit's
calibration absorb) removes about two thirds of it. The first-order model's own error against the exact circuit — what
the cheap model gets wrong — grows as the square of the resistance and reaches the part no gain absorbs at a few Ω.
"""),
    code("""
dev2 = HermesPCM(num_devices=2)
W_tile = jax.random.normal(jax.random.key(8), (1, 252, 112)) * np.sqrt(2 / 504)  # He: fan-in 3·3·56
W_tile = jnp.pad(W_tile, ((0, 0), (0, 4), (0, 0)))  # rows from row 0 of a 256-row core
g_tile, _ = map_weights(W_tile, dev2.g_max, pj.ChipConfig(n_cores=1, cols=112))
x_in = jax.random.uniform(jax.random.key(9), (64, 256)).at[:, 252:].set(0.0)
y_ideal = x_in @ (g_tile[0, 0] - g_tile[0, 1])
ohms = [0.25, 0.5, 1.0, 2.0, 4.0]
curves = {"exact vs ideal": [], "exact, one gain per column": [], "first order vs exact": []}
for r in ohms:
    ep, en = transfer_pair(g_tile[:, 0], g_tile[:, 1], r, r)
    fp, fn = effective_pair(g_tile[:, 0], g_tile[:, 1], r, r)
    y_ex, y_fo = x_in @ (ep - en)[0], x_in @ (fp - fn)[0]
    gain = jnp.sum(y_ideal * y_ex, 0) / jnp.sum(y_ex * y_ex, 0)
    rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(y_ideal))  # noqa: E731
    curves["exact vs ideal"].append(rel(y_ex, y_ideal))
    curves["exact, one gain per column"].append(rel(gain * y_ex, y_ideal))
    curves["first order vs exact"].append(rel(y_fo, y_ex))
plt.figure(figsize=(5, 3.6))
for (name, errs), marker in zip(curves.items(), "o^s"):
    plt.loglog(ohms, errs, marker + "-", label=name)
plt.xlabel("wire resistance per cell pitch (Ω)"); plt.ylabel("relative MVM error")
plt.title("ResNet-9 layer1 tile, 252×112"); plt.legend(fontsize=8); plt.grid(alpha=0.3)
plt.tight_layout(); plt.show()
for name, errs in curves.items():
    print(f"{name:<28}" + "".join(f"  {e:.3f}" for e in errs))
"""),
    md("""
So the first-order model is adequate below about 0.5 Ω per pitch on full tiles (0.2 % here), and the exact solve is
needed beyond about 1 Ω (`benchmarks/irdrop_networks.py` runs every ResNet-9 layer, a digits MLP and a character
LSTM on HERMES chips against the wire resistance; `benchmarks/RESULTS.md`, "IR drop"). The exact solve costs one
direct solve per core **per state** — `state.at_time(key, t)` computes the effective conductances once and every
`pj.mvm` of that state is then an ordinary MVM — about a second of CPU per 256×256 core. On the CPU run it with
`OPENBLAS_NUM_THREADS=1` in the environment (LAPACK's threads otherwise compete with XLA's).

## 5. Device faults

`FaultConfig(stuck_set=..., stuck_reset=..., dead_columns=...)` in `ChipConfig` draws faults whenever a chip is
programmed. To sweep a rate without recompiling, `apply_faults` takes traced rates, so the sweep is one `vmap`:
"""),
    code("""
C, R, K = 4, 64, 64
key = jax.random.key(1)
W = jax.random.normal(key, (C, R, K))
x = jax.random.uniform(jax.random.key(2), (C, 32, R), minval=-1, maxval=1)
ideal_cfg = pj.ChipConfig.ideal(n_cores=C, rows=R, cols=K)
state = pj.program_chip(key, W, ideal_cfg)
ref = jnp.einsum("cbr,crk->cbk", x, W)
rates = jnp.array([0.0, 0.001, 0.003, 0.01, 0.03])

def mvm_error(rate, kind):
    f = FaultConfig(**{kind: rate})
    s = apply_faults(jax.random.key(3), state, f)
    y = jnp.einsum("cbr,crk->cbk", x, s.w[:, 0] * s.w_max)  # ideal periphery: the array alone
    return jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref)

plt.figure(figsize=(5, 3.5))
for kind in ("stuck_set", "stuck_reset", "dead_columns"):
    errs = jax.vmap(lambda r: mvm_error(r, kind))(rates)
    plt.plot(rates, errs, "o-", label=kind)
plt.xlabel("fault rate"); plt.ylabel("relative MVM error"); plt.legend(); plt.grid(alpha=0.3)
plt.tight_layout(); plt.show()
"""),
    md("""
A stuck-at-SET device is the most harmful per fault: it adds the largest conductance where a small one was
intended. A dead column loses a whole output. The Monte Carlo runner sweeps a rate the same way, one
`apply_faults` per chip instance.

## 6. Temperature

The device statistics are room-temperature (300 K) figures. `TemperatureConfig` adds an Arrhenius factor with a
state-dependent activation energy (near-RESET devices change most), the drift exponent `ν · T_a/T_r` (unchanged
when storage and read temperature agree) and Hooge scaling of the read noise. A chip programmed at 300 K and read
at another temperature (`at_temperature`) with and without global drift compensation:
"""),
    code("""
C, R, K = 2, 64, 64
W = jax.random.normal(jax.random.key(4), (C, R, K))
x = jax.random.uniform(jax.random.key(5), (C, 32, R), minval=-1, maxval=1)
ref = jnp.einsum("cbr,crk->cbk", x, W)
temps = [280.0, 300.0, 320.0, 350.0]
plt.figure(figsize=(5, 3.5))
for comp in ("none", "global"):
    cfg = pj.ChipConfig.ideal(n_cores=C, rows=R, cols=K).replace(drift=True, drift_compensation=comp)
    st = pj.program_chip(jax.random.key(6), W, cfg)
    errs = []
    for T in temps:
        s = at_temperature(st, T).at_time(jax.random.key(7), 3600.0)
        y = jnp.einsum("cbr,crk->cbk", x, s.w[:, 0] * s.comp[:, None, :] * s.w_max)  # ideal periphery
        errs.append(float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref)))
    plt.plot(temps, errs, "o-", label=f"compensation: {comp}")
plt.xlabel("read temperature (K), programmed at 300 K"); plt.ylabel("relative MVM error at 1 h")
plt.legend(); plt.grid(alpha=0.3); plt.tight_layout(); plt.show()
"""),
    md("""
Global compensation removes the common temperature shift; what remains comes from the spread of activation
energies across conductance levels. The activation energies are typical magnitudes for doped GST, not fitted
HERMES figures — fit them to measurements before quoting absolute numbers.

**References**

- M. Le Gallo et al., "A 64-core mixed-signal in-memory compute chip based on phase-change memory for deep neural
  network inference", *Nature Electronics* 6, 680–693 (2023), Table I — the cost figures.
- J. Büchel et al., "Programming weights to analog in-memory computing cores by direct minimization of the
  matrix-vector multiplication error", *IEEE JETCAS* 13, 1052 (2023) — gradient-based programming.
- M. Le Gallo et al., "The complete time/temperature dependence of I-V drift in PCM devices", *IEEE IRPS* 2016;
  I. Boybat et al., "Temperature sensitivity of analog in-memory computing using phase-change memory",
  *IEEE IEDM* 2021 — temperature.
"""),
]


# ----------------------------------------------------------------------------------------
# 07: your own Flax model on the chip
# ----------------------------------------------------------------------------------------
NB7 = [
    md("""
# 07 — Your own Flax model on the chip

The networks of notebook 03 were written with pcmjax's analog layers. Most networks are not: they are plain
Flax NNX modules built from `nnx.Linear`, `nnx.Conv`, `nnx.MultiHeadAttention`, `nnx.RNN` and friends, with
weights trained long ago. `pnn.convert(model, data=x)` takes such a model as it is and returns an analog copy:

- every weight layer the crossbars can hold (`nnx.Linear`, `nnx.Conv`, `nnx.LinearGeneral`, `nnx.Einsum`,
  and the recurrent cells `nnx.LSTMCell`, `nnx.OptimizedLSTMCell`, `nnx.GRUCell`, `nnx.SimpleCell`) becomes
  its analog counterpart with **the same parameters**, wherever it sits (attributes, lists, dicts,
  `nnx.Sequential`, nested modules);
- everything else (embeddings, normalisation, activations, pooling, dropout, attention scores and softmax,
  your own code) stays as it is, in the chip's digital units;
- with `data`, one digital pass measures every layer's **input range** (what the PWM's full scale stands for).

In digital mode the copy computes *exactly* what the original does. From there the path is the one of
notebook 03: hardware-aware fine-tuning, deployment, Monte Carlo over chip instances, calibration.
The data are scikit-learn's 8×8 digits again.
"""),
    code("""
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import pcmjax as pj
from pcmjax import nn as pnn
from pcmjax.data import load_digits

T_START = time.perf_counter()
data = load_digits(as_images=True)
x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
print(x_train.shape, x_test.shape)
"""),
    md("""
## 1. A plain Flax model, trained in float

Nothing here knows about pcmjax: two convolutions with batch-norm, dropout and a linear classifier. `pnn.train`
is just a convenient optax loop; any training code would do.
"""),
    code("""
class DigitsNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(16, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 32, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.conv2(x))
        return self.head(self.dropout(x.reshape(x.shape[0], -1)))

model = DigitsNet(nnx.Rngs(0))
hist = pnn.train(jax.random.key(0), model, x_train, y_train, epochs=10, learning_rate=3e-3)
acc_float = pnn.accuracy(model, x_test, y_test)
print(f"float training: {hist['seconds']:.1f} s, test accuracy {100 * acc_float:.2f} %")
"""),
    md("""
## 2. Convert

`convert` leaves `model` untouched and returns a new module. The analog layers are in `"digital"` mode, so
the converted network gives the same outputs, bit for bit. Batch-norm and dropout are still Flax's.
"""),
    code("""
analog = pnn.convert(model, data=x_train[:512])
for path, layer in pnn.analog_layers(analog):
    print(f"{'/'.join(map(str, path)):6s} {type(layer).__name__:13s} matrix {layer.matrix_shape()}, "
          f"input range {float(layer.input_scale[...]):.3f}")
print("original untouched:", type(model.conv1).__name__, "| BatchNorm kept:", type(analog.bn1).__name__)
model.eval(); analog.eval()
print("converted == original (digital):", bool(jnp.array_equal(analog(x_test), model(x_test))))
"""),
    md("""
Without `data`, no layer knows its input range. The chip cannot encode an input whose range is unknown, so
deploying such a model is an error that names the layers, never a silent default range:
"""),
    code("""
try:
    pnn.deploy(pnn.convert(model), jax.random.key(0), pj.ChipConfig())
except ValueError as e:
    print(e)
"""),
    md("""
## 3. Hardware-aware fine-tuning, deployment

The converted model trains hardware-aware like any pcmjax network (notebook 03 explains the HERMES recipe in
`HWAConfig`). We fine-tune a copy for a few epochs and deploy it on a HERMES chip; section 4 compares it with
the plain conversion over many chips.
"""),
    code("""
hwa_model = nnx.clone(analog)
hist = pnn.train(jax.random.key(1), hwa_model, x_train, y_train, mode="hwa", epochs=4, learning_rate=1e-3)
print(f"HWA fine-tuning: {hist['seconds']:.1f} s, digital accuracy "
      f"{100 * pnn.accuracy(hwa_model, x_test, y_test, mode='digital'):.2f} %")

cfg = pj.ChipConfig()
deployed = pnn.deploy(hwa_model, jax.random.key(2), cfg)
print(deployed.report())
key = jax.random.key(3)
for t in (1.0, 86400.0, 3.15e7):
    acc = float(pnn.deployed_accuracy(deployed.at_time(key, t), key, x_test, y_test))
    print(f"t = {t:>10.0f} s: chip accuracy {100 * acc:.2f} %")
"""),
    md("""
## 4. A Monte Carlo over chip instances

Every chip is different. The pure pieces of a deployed model (`program`, `ChipState.at_time`, `apply`) are
`vmap`-able over keys, so a batch of chip instances is one more array axis.
"""),
    code("""
N = 6
TIMES = {"1 s": 1.0, "1 day": 86400.0, "1 year": 3.15e7}
keys = jax.random.split(jax.random.key(10), N)       # programming and read noise of each chip
age_keys = jax.random.split(jax.random.key(11), N)   # drift and 1/f noise of each chip

def monte_carlo(dep):
    states = jax.vmap(dep.program)(keys)
    ident = jax.tree.map(lambda a: jnp.broadcast_to(a, (N,) + a.shape), pnn.identity_calibration(dep.layout))
    acc_fn = jax.jit(jax.vmap(lambda s, c, k: pnn.deployed_accuracy(dep, k, x_test, y_test, state=s, calibration=c)))
    aged = {name: jax.vmap(lambda s, k: s.at_time(k, t))(states, age_keys) for name, t in TIMES.items()}
    return {name: np.asarray(acc_fn(aged[name], ident, keys)) for name in TIMES}, aged, acc_fn

t0 = time.perf_counter()
studies = {}
for name, m in (("converted, no HWA", analog), ("converted + HWA", hwa_model)):
    studies[name] = monte_carlo(pnn.deploy(m, jax.random.key(2), cfg))
    print(f"{name:18s}", "  ".join(f"{t}: {100 * a.mean():.2f} ± {100 * a.std():.2f} %"
                                   for t, a in studies[name][0].items()))
print(f"float network: {100 * acc_float:.2f} % ({time.perf_counter() - t0:.0f} s for {2 * N} chips)")
"""),
    md("""
## 5. Calibration

A year after programming, `calibrate` learns the digital units' per-column corrections of every layer from
unlabelled inputs by gradients through the simulated chip (notebook 03, section 5). `make_calibrator` is the
same as a pure function of a chip state, so it runs on all chip instances at once.
"""),
    code("""
dep = pnn.deploy(hwa_model, jax.random.key(2), cfg)
accs, aged, acc_fn = studies["converted + HWA"]
calibrator = jax.jit(jax.vmap(pnn.make_calibrator(dep, x_train[:256], steps=40, learning_rate=1e-2)))
cals, _ = calibrator(aged["1 year"], jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys))
cal_acc = np.asarray(acc_fn(aged["1 year"], cals, keys))
print(f"1 year, HWA + GDC:               {100 * accs['1 year'].mean():.2f} ± {100 * accs['1 year'].std():.2f} %")
print(f"1 year, HWA + GDC + calibration: {100 * cal_acc.mean():.2f} ± {100 * cal_acc.std():.2f} %")
"""),
    md("""
## 6. Recurrent and attention layers

`convert` also takes LSTMs, GRUs and transformers. A recurrent cell becomes **one matrix**
`[x, h] @ [[W_x], [W_h]]` with its gates' columns interleaved (how HERMES maps an LSTM): every time step is an
MVM on the same programmed cores, each with fresh read noise, while the gate activations and the cell state
stay digital. `nnx.MultiHeadAttention`'s query, key, value and output projections go on the chip; the scores
and the softmax stay digital. On an ideal chip (`ChipConfig.ideal()`) both equal their Flax originals.
"""),
    code("""
class CharLSTM(nnx.Module):
    def __init__(self, rngs):
        self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(16, 64, rngs=rngs))
        self.out = nnx.Linear(64, 16, rngs=rngs)

    def __call__(self, x):
        return self.out(self.rnn(x))

class Encoder(nnx.Module):
    def __init__(self, rngs):
        self.norm = nnx.LayerNorm(32, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=32, decode=False, rngs=rngs)
        self.mlp = nnx.Sequential(nnx.Linear(32, 64, rngs=rngs), nnx.gelu, nnx.Linear(64, 32, rngs=rngs))

    def __call__(self, x):
        x = x + self.attn(self.norm(x))
        return x + self.mlp(x)

ideal = pj.ChipConfig.ideal(n_cores=8)
for net, x in ((CharLSTM(nnx.Rngs(0)), jax.random.normal(jax.random.key(0), (4, 10, 16))),
               (Encoder(nnx.Rngs(0)), jax.random.normal(jax.random.key(0), (4, 8, 32)))):
    dep = pnn.deploy(pnn.convert(net, data=x), jax.random.key(0), ideal)
    err = float(jnp.max(jnp.abs(dep(jax.random.key(1), x) - net(x))))
    print(dep.report())
    print(f"{type(net).__name__}: ideal chip vs Flax original, max |difference| = {err:.1e}\\n")
print(f"notebook ran in {time.perf_counter() - T_START:.1f} s")
"""),
]


def write(name: str, cells) -> pathlib.Path:
    nb = new_notebook(cells=cells)
    for i, cell in enumerate(nb.cells):
        cell.id = f"{pathlib.Path(name).stem[:2]}-{i:02d}"  # stable ids: regenerating gives no diff
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    path = HERE / name
    nbformat.write(nb, path)
    return path


def main():
    for name, cells in (("01_device_models.ipynb", NB1), ("02_chip_mvm.ipynb", NB2),
                        ("06_programming_and_parasitics.ipynb", NB6), ("07_your_flax_model.ipynb", NB7)):
        print("wrote", write(name, cells))


if __name__ == "__main__":
    main()

"""The programs a study compiles: one chip instance, one group of instances on a device.

:func:`instance_function` evaluates every time and variant of one instance (instance
``i`` uses ``fold_in(key(seed), i)``: studies derive their keys from the study seed);
:func:`histogram_function` bins the same instance's conductances; :func:`device_function`
``vmap``-s both over a group of instance ids, the unit one device evaluates per call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pcmjax.montecarlo.study import Study

HIST_BINS = 60


def histogram_edges(study: Study) -> np.ndarray:
    """Conductance-histogram bin edges, µS: ``HIST_BINS`` bins on ``[0, 1.1 g_max]``."""
    return np.linspace(0.0, 1.1 * float(np.asarray(study.device.g_max)), HIST_BINS + 1)


def instance_function(study: Study):
    """``f(data, device, seed, times, i) → [T, V, M]``: every metric of instance ``i`` at
    every time for every variant (pure; instance ``i`` uses ``fold_in(key(seed), i)``)."""
    workload, variants, metrics = study.workload, study.resolved_variants(), study.metrics

    def one(data, device, seed, times, i):
        key = jax.random.fold_in(jax.random.key(seed), i)
        values = []
        for v in variants:
            out = jax.vmap(lambda t, v=v: workload.evaluate(key, data, device, t, v))(times)
            missing = [m for m in metrics if m not in out]
            if missing:
                raise KeyError(f"workload {workload.kind!r} did not return metric(s) {missing}; it returned "
                               f"{sorted(out)}.")
            values.append(jnp.stack([jnp.asarray(out[m], jnp.float32) for m in metrics], axis=-1))
        return jnp.stack(values, axis=1)

    return one


def histogram_function(study: Study):
    """``f(data, device, seed, times, i) → [V, T, bins]``: instance ``i``'s devices with a
    non-zero target counted by conductance (bins of :func:`histogram_edges`)."""
    workload, variants = study.workload, study.resolved_variants()
    top = float(histogram_edges(study)[-1])

    def hist(key, data, device, t, v):
        g, mask = workload.conductances(key, data, device, t, v)
        idx = jnp.clip(jnp.floor(g * (HIST_BINS / top)).astype(jnp.int32), 0, HIST_BINS - 1)
        w = (mask & (g <= top)).astype(jnp.float32)
        return jnp.zeros(HIST_BINS, jnp.float32).at[idx].add(w)

    def one(data, device, seed, times, i):
        key = jax.random.fold_in(jax.random.key(seed), i)
        return jnp.stack([jax.vmap(lambda t, v=v: hist(key, data, device, t, v))(times) for v in variants])

    return one


def device_function(study: Study, width: int, histogram_instances: int = 0):
    """The per-device program ``f(data, device, seed, times, ids[width]) → {"values", "hist"}``:
    one group of instances, ``jax.vmap``-ed; ids < 0 are free slots (computed as instance
    0, then dropped).

    Conductance histograms (binning every device costs about as much as the evaluation
    itself) are computed only for instances ``< histogram_instances``, in a branch the
    other groups skip. (A loop over several groups inside the program would save calls,
    but XLA's CPU backend ran the loop body about 2.4 times slower than the same code
    outside a loop.)
    """
    group = jax.vmap(instance_function(study), in_axes=(None, None, None, None, 0))
    group_hist = jax.vmap(histogram_function(study), in_axes=(None, None, None, None, 0))
    n_t, n_v = len(study.times), len(study.variants)

    def per_device(data, device, seed, times, ids):
        idx = jnp.maximum(ids, 0)
        hist = jnp.zeros((width, n_v, n_t, HIST_BINS), jnp.float32)
        if histogram_instances:  # without histograms, no branch to compile
            want = (ids >= 0) & (ids < histogram_instances)
            hist = jax.lax.cond(jnp.any(want),
                                lambda: group_hist(data, device, seed, times, idx) * want[:, None, None, None],
                                lambda: hist)
        return {"values": group(data, device, seed, times, idx), "hist": hist}

    return per_device

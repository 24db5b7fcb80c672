"""Temperature: conductance, drift exponent and read noise away from the reference.

The device statistics of :mod:`pcmjax.devices` (HERMES, PCM-like) were measured at room
temperature; that is the reference ``T_ref`` (300 K by default) at which this module
changes nothing. Away from it, with ``T_a`` the ambient temperature the devices are kept
at after programming and ``T_r`` the temperature of the read (``T_a`` unless set):

* **Conductance** — thermally activated transport in the amorphous phase (Arrhenius)::

      G(T_r) = G(T_ref) · exp(−E_a(g)/k_B · (1/T_r − 1/T_ref)),
      E_a(g) = E_RESET + (E_SET − E_RESET) · clip(g_T / g_max, 0, 1)

  with a state-dependent activation energy: a device near RESET conducts through its
  amorphous volume (E_a ≈ 0.3 eV), a fully SET device through crystalline material
  (weakly activated). Interpolating linearly in the target conductance is a first-order
  choice; the multi-level characterisation of doped-GST mushroom cells (Boybat et al.
  2021) is the data to fit ``ea_reset_ev`` / ``ea_set_ev`` to.

* **Drift exponent** — structural relaxation raises the activation energy of conduction,
  ``E_a(t) = E_a0 + ν k_B T_a ln((t + t0)/t0)``: the relaxation accumulated in ``ln t``
  is proportional to the temperature it happens at (collective relaxation model), and
  for Ge₂Sb₂Te₅ drift is carried by the activation energy. Read at ``T_r`` this gives::

      ν_eff = ν · T_a / T_r

  so isothermal drift (``T_a = T_r``) keeps its exponent at any temperature, as measured
  (drift coefficients ~0.07–0.11 from 125 K to 300 K), while reading a chip colder than
  it was kept makes the drift look stronger, and warmer weaker.

* **Read noise** — Hooge's empirical law: the relative 1/f noise power is inversely
  proportional to the number of carriers, which scales with the thermally activated
  conductance, so the relative amplitude scales as ``(G(T)/G(T_ref))^(−β)`` with
  ``β = 1/2`` (the PCM-like model's own Q_s ∝ g_r^−0.65 is close to it). Applied to the
  per-read noise of every MVM; the accumulated 1/f noise of the state keeps its
  reference relative amplitude (first order).

Global drift compensation (PHYSICS.md §5) measures the total conductance, so it removes
the mean temperature shift; what remains is the spread of ``E_a`` across conductance
levels (the observation of Boybat et al. that array-level scaling corrects most of it).

Use ``ChipConfig(temperature=TemperatureConfig(temperature_k=330.0))`` for a chip
programmed, calibrated and used at 330 K, or :func:`at_temperature` to move a chip
programmed at the reference temperature (its compensation reference was read there).

The activation energies are typical magnitudes for doped GST, not fitted HERMES figures:
fit them (and ``noise_exponent``) to measurements before quoting absolute numbers.

References:
  M. Le Gallo, A. Sebastian, D. Krebs, M. Stanisavljevic, E. Eleftheriou, "The complete
  time/temperature dependence of I-V drift in PCM devices", IEEE IRPS 2016; M. Le Gallo,
  D. Krebs, F. Zipoli, M. Salinga, A. Sebastian, "Collective structural relaxation in
  phase-change memory devices", Adv. Electron. Mater. 4, 1700627 (2018); M. Wimmer et
  al., "Role of activation energy in resistance drift of amorphous phase change
  materials", Front. Phys. 2, 75 (2014); R. S. Khan et al., "Resistance drift in
  Ge₂Sb₂Te₅ phase change memory line cells at low temperatures and its response to
  photoexcitation", Appl. Phys. Lett. 116 (2020); I. Boybat et al., "Temperature sensitivity of analog in-memory
  computing using phase-change memory", IEEE IEDM 2021; F. N. Hooge, "1/f noise is no
  surface effect", Phys. Lett. A 29, 139 (1969).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from pcmjax.config.temperature import TemperatureConfig

K_B_EV = 8.617333262e-5  # Boltzmann constant, eV/K


def activation_energy(g_r, tc: TemperatureConfig):
    """``E_a(g)`` in eV for normalised target conductances ``g_r``."""
    return tc.ea_reset_ev + (tc.ea_set_ev - tc.ea_reset_ev) * jnp.clip(g_r, 0.0, 1.0)


def conductance_factor(g_r, tc: TemperatureConfig):
    """Arrhenius factor ``G(T_r) / G(T_ref)`` per device."""
    inv = 1.0 / tc.read_k - 1.0 / tc.reference_k
    return jnp.exp(-activation_energy(g_r, tc) / K_B_EV * inv)


def drift_exponent_factor(tc: TemperatureConfig) -> float:
    """``ν_eff / ν = T_a / T_r``."""
    return tc.ambient_k / tc.read_k


def noise_factor(g_r, tc: TemperatureConfig):
    """Relative read-noise amplitude factor ``(G(T)/G(T_ref))^(−β)``."""
    return conductance_factor(g_r, tc) ** (-tc.noise_exponent)


def apply(g, var, g_target, nu, t, t0, g_max, tc: TemperatureConfig):
    """Conductances and per-read variances at the configured temperature.

    Args:
      g: ``[..., C, 2, R, K]`` conductances at ``t`` at the reference temperature, µS.
      var: per-read variances (normalised by ``g_max²``), same shape.
      g_target: target conductances (select the activation energy), µS.
      nu: drift exponents.
      t: seconds since programming.
      t0: the device model's ``t0``.
      g_max: the device model's ``g_max``.
      tc: :class:`TemperatureConfig`.

    Returns:
      ``(g, var)`` at temperature.
    """
    g_r = g_target / g_max
    a = conductance_factor(g_r, tc)
    extra = drift_exponent_factor(tc) - 1.0
    # ((t + t0)/t0)^(−ν (T_a/T_r − 1)): the part of the drift the reference model lacks.
    d = jnp.exp(-nu * extra * jnp.log1p(jnp.maximum(t, 0.0) / t0))
    scale = a * d
    return g * scale, var * (scale * noise_factor(g_r, tc)) ** 2


def at_temperature(state, temperature_k, read_temperature_k=None, **params):
    """A chip state to be read at another temperature (its programming is unchanged).

    The compensation reference read at programming keeps the temperature it was read at;
    the next ``at_time`` sees the devices at ``temperature_k``.

    Args:
      state: a :class:`~pcmjax.ChipState`.
      temperature_k: ambient temperature, K (``None``: the reference).
      read_temperature_k: read temperature if different, K.
      **params: other :class:`TemperatureConfig` fields (activation energies...).

    Returns:
      the state with ``cfg.temperature`` replaced.
    """
    old = getattr(state.cfg, "temperature", TemperatureConfig())
    tc = dataclasses.replace(old, temperature_k=temperature_k, read_temperature_k=read_temperature_k, **params)
    return state.replace(cfg=state.cfg.replace(temperature=tc))

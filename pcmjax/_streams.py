"""Named ``jax.random.fold_in`` tags: every derived random stream of pcmjax, in one place.

A stream folded into a key with its own tag leaves every other stream unchanged, so
switching an optional effect on (faults, gradient-based programming) does not change the
random numbers of anything else. Tags are fixed numbers: changing one changes results.
"""

GDP = 0x6D9  # program_chip: gradient-based choice of the programming targets
FAULTS = 0xFA17  # program_chip: stuck devices and dead columns
HWA = 0x4857  # analog layers: the noise stream of hardware-aware training
CARRY = 0x4341  # analog recurrent cells: the carry stream of Flax's cells
STEP = 0x5354  # analog recurrent cells on the chip: the read key of every time step
CONVERT = 0x5043  # pcmjax.nn.convert: the (discarded) initialisation of each converted layer

__all__ = ["GDP", "FAULTS", "HWA", "CARRY", "STEP", "CONVERT"]

"""``pcmjax study --print-config``: a commented template of every study-file key.

The active (uncommented) lines are the embedded default study; every other key is shown
commented, with its default or an example. The ``[chip]`` section lists every option of
:class:`pcmjax.ChipConfig` with its HERMES default, generated from the class itself.
"""

from __future__ import annotations

import dataclasses

from pcmjax.config import ChipConfig

HEAD = """\
# pcmjax study file (TOML): run with `pcmjax study --config study.toml`.
# Uncommented lines below are the embedded default study; every key is listed.
# Relative paths (checkpoint, dataset, file, data_dir, a model's .py file) are relative to
# this file; output is relative to the working directory.

[study]
name = "digits-mlp-hermes"
instances = 100                     # chip instances (instance i draws from fold_in(key(seed), i))
seed = 0
times = { start = "1 s", stop = "1 year", num = 6 }    # log-spaced; or a list:
# times = ["1 s", "1 h", "1 day", "1 month", "1 year"]   # units: s, min, h, day, week, month, year
# metrics = ["accuracy", "loss"]    # default: all of the workload's
# output = "pcmjax-results"         # output folder

[workload]
kind = "network"                    # "network" (a deployed network) or "mvm" (raw chip MVMs)
checkpoint = "default"              # the cached digits MLP, or a save_network .npz of a built-in network
dataset = "digits"                  # "digits", "cifar10" (with data_dir), or "data.npz"
# data_dir = "cifar-10-batches-py"  # for dataset = "cifar10"
# eval_examples = 450               # default: the whole test split / every example of data.npz
# calibration_examples = 128        # unlabelled inputs of calibrated variants (and input-range measurement)
# calibration = "lstsq"             # or "gradient" (Adam through the chip)
# calibration_steps = 200           # for calibration = "gradient"
# n_chips = 1                       # chips the network may span
#
# A network of your own (a Flax NNX module, converted with pcmjax.nn.convert if it has no
# analog layer; input ranges measured on the data set's first examples unless the
# checkpoint holds them):
# model = "mypackage.nets:make_model"   # or "nets.py:make_model" (a file beside this one)
# model_args = { hidden = 256 }         # keyword arguments of the factory
# checkpoint = "params.npz"             # pcmjax.montecarlo.save_network(path, model), or arrays named by path
# dataset = "data.npz"                  # x and integer y (classification; metrics accuracy, loss), or integer
#                                       # token sequences x [sequences, length] alone (metric bpc: bits per
#                                       # character/token); optional x_cal: calibration inputs
# exclude = ["head"]                    # layers (paths or types) kept digital
#
# kind = "mvm":
# cores = 4                         # cores programmed
# rows = 256                        # default: the chip's
# cols = 256
# batch = 64                        # input vectors per evaluation
# calibration_batch = 64            # input vectors of calibrated variants
# weights = "gaussian"              # weight distribution of the random matrices
# inputs = "uniform"                # input distribution
# data_seed = 0                     # seed of the weights and inputs

[device]
model = "hermes"                    # "hermes", "pcm_like", "state_independent"
num_devices = 2                     # devices per sign
# drift_scale = 1.2                 # any other key overrides a parameter of the model, e.g.
# prog_scale = 1.0                  #   prog_scale, drift_scale, read_noise_scale, g_max, t0
# file = "my_fit.json"              # a fitted model (pcmjax fit); alone in this table

[chip]                              # pcmjax.ChipConfig: HERMES defaults unless set here
# preset = "hermes-four-phase"      # a starting point the other keys change: hermes-four-phase,
#                                   # hermes-one-phase, hermes-four-phase-verify, hermes-one-phase-verify
"""

TAIL = """
# Variants: named chip-option overrides, each evaluated on the same chips; default none / gdc / calibrated.
[variants.none]
drift_compensation = "none"
[variants.gdc]
drift_compensation = "global"
[variants.calibrated]
drift_compensation = "global"
calibrate = true                    # per-column affine correction fitted at every time
# [variants.readout]
# drift_compensation = "global"
# calibrate = "readout"             # that, then the output layer refitted for the network's output
#                                   # distribution (pcmjax.nn.fit_readout; networks whose output is
#                                   # their last analog layer's logits)

[run]                               # how to run (not part of the study's identity)
# chunk_size = 32                   # instances per chunk file (default: from the memory budget)
# memory_budget = "2GiB"
# devices = 1                       # JAX devices to shard instances over (default: all)
# vmap_width = 8                    # instances per device at once (results are bit-identical for a width)
# histogram_instances = 8           # instances pooled in the conductance histograms; 0: none (a
#                                   # smaller program, about a quarter faster per evaluation)
# plots = true                      # write PNG figures
"""


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def _chip_lines() -> list[str]:
    """Every ChipConfig option, commented, with its default (sections as sub-tables)."""
    top, sections = [], []
    for f in dataclasses.fields(ChipConfig):
        value = getattr(ChipConfig(), f.name)
        if dataclasses.is_dataclass(value):
            sections.append(f"# [chip.{f.name}]")
            for g in dataclasses.fields(value):
                v = getattr(value, g.name)
                if dataclasses.is_dataclass(v):
                    sections.append(f"# [chip.{f.name}.{g.name}]")
                    sections.extend(f"# {h.name} = {_toml(getattr(v, h.name))}" for h in dataclasses.fields(v)
                                    if getattr(v, h.name) is not None)
                elif v is None:
                    sections.append(f"# {g.name} =                     # unset by default")
                else:
                    sections.append(f"# {g.name} = {_toml(v)}")
        elif value is None:
            top.append(f"# {f.name} =                         # unset by default")
        else:
            top.append(f"# {f.name} = {_toml(value)}")
    return top + sections


def template() -> str:
    """The commented study-file template (valid TOML: the default study)."""
    return HEAD + "\n".join(_chip_lines()) + "\n" + TAIL


def run(args) -> int:
    print(template(), end="")
    return 0

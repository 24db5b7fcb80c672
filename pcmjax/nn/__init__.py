"""Flax (nnx) integration: analog layers, hardware-aware training, deployment, calibration.

::

    import pcmjax as pj
    from pcmjax import nn as pnn

    model = pnn.MLP(64, (256, 256), 10, rngs=nnx.Rngs(0))      # AnalogLinear layers
    # or any Flax NNX model: its Linear/Conv/attention/recurrent layers made analog
    model = pnn.convert(flax_model, data=x_sample)
    pnn.train(key, model, x, y, mode="hwa")                      # hardware-aware training
    # every analog layer needs its input range before deploy: train, convert(data=...),
    # or pnn.set_input_scales(model, x_sample) / pnn.measure_input_ranges(model, x_sample)
    deployed = pnn.deploy(model, key, pj.ChipConfig())           # tiles → cores, programmed
    print(deployed.report())
    y_1day = deployed.at_time(k_age, 86400.0)(k_read, x)
    calibrated = pnn.calibrate(deployed, key, x_unlabelled, t=86400.0)
"""

from pcmjax.config.hwa import HWAConfig
from pcmjax.nn._context import layer_call_order
from pcmjax.nn.calibrate import calibrate, calibration_loss, fit_readout, make_calibrator, readout_layer
from pcmjax.nn.convert import CONVERTIBLE, convert, measure_input_ranges
from pcmjax.nn.deploy import DeployedModel, LayerPlacement, Layout, deploy, identity_calibration, plan, tile_weights
from pcmjax.nn.general import AnalogEinsum, AnalogLinearGeneral
from pcmjax.nn.layers import (
    MODES,
    AnalogConv,
    AnalogLayer,
    AnalogLinear,
    InputScale,
    analog_layers,
    clip_weights,
    missing_input_ranges,
    set_input_scales,
    set_mode,
)
from pcmjax.nn.models import MLP, ResNet9, SmallCNN
from pcmjax.nn.mvm_count import layer_mvms
from pcmjax.nn.recurrent import (
    AnalogGRUCell,
    AnalogLSTMCell,
    AnalogOptimizedLSTMCell,
    AnalogRNN,
    AnalogSimpleCell,
)
from pcmjax.nn.train import accuracy, deployed_accuracy, predict, train

__all__ = [
    "AnalogLinear", "AnalogConv", "AnalogLayer", "InputScale", "HWAConfig", "MODES", "set_mode", "clip_weights",
    "set_input_scales", "missing_input_ranges", "layer_call_order", "analog_layers", "deploy", "plan",
    "DeployedModel", "Layout", "LayerPlacement",
    "identity_calibration", "tile_weights", "calibrate", "calibration_loss", "make_calibrator", "fit_readout",
    "readout_layer", "MLP",
    "SmallCNN",
    "ResNet9",
    "train", "accuracy", "predict", "deployed_accuracy", "layer_mvms",
    "convert", "measure_input_ranges", "CONVERTIBLE", "AnalogLinearGeneral", "AnalogEinsum", "AnalogLSTMCell",
    "AnalogOptimizedLSTMCell", "AnalogGRUCell", "AnalogSimpleCell", "AnalogRNN",
]

"""Chip periphery: PWM input encoding, the CCO time-based ADC and the local digital unit."""

from pcmjax.periphery.adc import ADCConfig, adc_transfer, sample_adc_mismatch
from pcmjax.periphery.ldpu import ACTIVATIONS, apply_activation, ldpu_affine
from pcmjax.periphery.pwm import PWMConfig, pwm_encode

__all__ = ["ADCConfig", "PWMConfig", "adc_transfer", "sample_adc_mismatch", "pwm_encode", "ldpu_affine",
           "apply_activation", "ACTIVATIONS"]

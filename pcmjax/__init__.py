"""pcmjax: a differentiable, jit-compiled simulator of PCM analog in-memory-compute chips."""

from pcmjax import devices

__version__ = "0.1.0"

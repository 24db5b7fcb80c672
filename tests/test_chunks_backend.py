"""Backend-dependent defaults of the Monte Carlo runner: vmap width and memory per group."""

from pcmjax.montecarlo import _chunks


def test_width_limits_depend_on_the_backend():
    cpu_width, cpu_bytes = _chunks.width_limits("cpu")
    gpu_width, gpu_bytes = _chunks.width_limits("gpu")
    assert (cpu_width, cpu_bytes) == (_chunks.MAX_WIDTH, _chunks.GROUP_TARGET_BYTES)
    assert gpu_width > cpu_width and gpu_bytes > cpu_bytes
    assert _chunks.width_limits("some-new-accelerator") == (gpu_width, gpu_bytes)


def test_choose_chunk_uses_the_backend_limits():
    mib = 1 << 20
    # 10 MiB per instance, 8 GiB budget: a CPU group stops at 64 MiB (6 instances), a GPU
    # group at its 1 GiB (102 instances).
    assert _chunks.choose_chunk(1000, 1, 10 * mib, 8 << 30, backend="cpu")[2] == 6
    assert _chunks.choose_chunk(1000, 1, 10 * mib, 8 << 30, backend="gpu")[2] == 102
    # the budget still bounds the width on any backend
    assert _chunks.choose_chunk(1000, 1, 10 * mib, 100 * mib, backend="gpu")[2] == 10

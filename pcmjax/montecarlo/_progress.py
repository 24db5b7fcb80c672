"""The progress line of a running study: instances, evaluations per second, ETA."""

from __future__ import annotations

import sys
import time

try:
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - tqdm is optional: a plain line per chunk instead
    tqdm = None


class Progress:
    """tqdm bar with instance rate, evaluation rate and ETA (or a plain line per chunk)."""

    def __init__(self, total, initial, evals_per_instance, desc, quiet):
        self.quiet, self.evals = quiet, evals_per_instance
        self.t0, self.n0, self.n = time.perf_counter(), initial, initial
        self.total = total
        self.bar = None
        if not quiet:
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, unit="inst", desc=desc, file=sys.stderr,
                                dynamic_ncols=True, smoothing=0.3)

    def update(self, n):
        self.n += n
        rate = (self.n - self.n0) / max(time.perf_counter() - self.t0, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{rate * self.evals:.1f} evals/s", refresh=False)
            self.bar.update(n)
        elif not self.quiet:
            eta = (self.total - self.n) / max(rate, 1e-9)
            print(f"  {self.n}/{self.total} instances, {rate * self.evals:.1f} evals/s, ETA {eta:.0f} s",
                  file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()

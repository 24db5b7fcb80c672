"""Cores used with and without shared cores (``pcmjax.nn.plan(..., share_cores=True)``).

For the digits MLP (64-256-256-10), the digits CNN (``SmallCNN`` 16-32-64 on 8×8 images),
ResNet-9 (widths 56-112-224-224, 32×32 RGB) and the character LSTM of ``char_lstm.py``
(128 units, as measured there, and HERMES's 504), each planned on HERMES chips (64 cores
of 256×256): tiles, physical cores one tile per core and shared, the cores that hold
several layers, and what the cost model (``pcmjax.cost``, four-phase reads) makes of it:
TOPS/mm² over the physical cores and the pipelined rate, set by the busiest core (layers
sharing a core take turns). Placement only: no chip is programmed, nothing is trained.

    .venv/bin/python benchmarks/placement_sharing.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

import pcmjax as pj
from pcmjax import cost
from pcmjax import nn as pnn
from pcmjax.nn.convert import convert

sys.path.insert(0, str(Path(__file__).resolve().parent))
from char_lstm import char_lstm  # noqa: E402  (a sibling script)


def networks():
    """``(name, model, input shape for layer_mvms or None: one MVM per layer per step)``."""
    rngs = nnx.Rngs(0)
    yield "digits MLP 64-256-256-10", pnn.MLP(64, (256, 256), 10, rngs=rngs), (64,)
    yield "digits CNN 16-32-64", pnn.SmallCNN(1, (16, 32, 64), 10, 8, rngs=rngs), (8, 8, 1)
    yield "ResNet-9 56-112-224-224", pnn.ResNet9(10, (56, 112, 224, 224), rngs=rngs), (32, 32, 3)
    for hidden in (128, 504):
        tokens = jax.random.randint(jax.random.key(0), (2, 8), 0, 50)
        model = convert(char_lstm(hidden=hidden), data=jnp.asarray(tokens))
        yield f"char LSTM {hidden} units (per step)", model, None


def row(name, model, shape, cfg) -> dict:
    out = {"network": name}
    for share in (False, True):
        layout = pnn.plan(model, cfg, n_chips=8, share_cores=share)
        mvms = pnn.layer_mvms(model, layout, shape) if shape is not None else None
        c = cost.network_cost(cost.from_layout(layout, mvms), cfg.read_phases)
        tag = "shared" if share else "alone"
        out.update({"tiles": layout.n_tiles, f"cores_{tag}": layout.n_cores, f"shared_cores_{tag}": c["shared_cores"],
                    f"utilisation_{tag}": round(layout.utilisation, 4),
                    f"tops_per_mm2_{tag}": round(c["tops_per_mm2"], 4),
                    f"ips_pipelined_{tag}": round(c["throughput_ips"], 1)})
        if share:
            out["sharing"] = [" + ".join(names) for names in layout.shared().values()]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON line per network instead of a table")
    args = p.parse_args(argv)
    cfg = pj.ChipConfig()
    rows = [row(*net, cfg) for net in networks()]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print("| network | tiles | cores, one tile each | cores, shared | cores holding 2+ layers | devices used "
          "(alone → shared) | TOPS/mm² (alone → shared) | inferences/s pipelined (alone → shared) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['network']} | {r['tiles']} | {r['cores_alone']} | {r['cores_shared']} | "
              f"{r['shared_cores_shared']}{': ' + '; '.join(r['sharing']) if r['sharing'] else ''} | "
              f"{100 * r['utilisation_alone']:.1f} % → {100 * r['utilisation_shared']:.1f} % | "
              f"{r['tops_per_mm2_alone']:.3g} → {r['tops_per_mm2_shared']:.3g} | "
              f"{r['ips_pipelined_alone']:.4g} → {r['ips_pipelined_shared']:.4g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

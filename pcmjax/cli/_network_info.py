"""``pcmjax info --network``: a network's placement on chips and its cost per inference,
beside the accuracy a Monte Carlo study measured for it."""

from __future__ import annotations

import sys
from pathlib import Path

from pcmjax import cost
from pcmjax.montecarlo import load_results
from pcmjax.montecarlo.checkpoints import default_network, default_network_path, load_network, params_fingerprint
from pcmjax.montecarlo.store import RunFolder
from pcmjax.nn import layer_mvms, plan

DEFAULT_RESULTS = "pcmjax-results"


def _input_shape(arch: dict) -> tuple:
    """One example's shape for a checkpoint's architecture (see build_network)."""
    kind = arch.get("kind")
    if kind == "mlp":
        return (int(arch.get("in_features", 64)),)
    if kind == "small_cnn":
        side = int(arch.get("image_size", 8))
        return (side, side, int(arch.get("in_features", 1)))
    raise ValueError(f"--network: cannot tell the input shape of architecture kind {kind!r}; "
                     "known: 'mlp', 'small_cnn'.")


def _load_network(name: str, log):
    if name == "default":
        path = default_network_path()
        if not path.exists():
            default_network(path, log=log)
    else:
        path = Path(name)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise FileNotFoundError(f"--network: network checkpoint {name!r} {what}; give a checkpoint file "
                                    "written by pcmjax.montecarlo.save_network (.npz) or 'default' (the cached "
                                    "digits MLP).")
    try:
        model, arch, ckpt = load_network(path)
    except (ValueError, KeyError) as e:
        raise ValueError(f"--network: {e}") from e
    return model, arch, ckpt, path


def _study_spec(folder) -> dict:
    """The study spec in a study folder's manifest (``{}`` if there is none or it is unreadable)."""
    folder = Path(folder)
    if folder.suffix == ".npz":
        folder = folder.parent
    try:
        m = RunFolder(folder).manifest() or {}
    except ValueError:
        return {}
    spec = m.get("spec", {})
    return spec if isinstance(spec, dict) else {}


def _study_accuracy(folder, explicit: bool):
    """``(accuracy dict, source note)`` of a study output folder: mean accuracy per variant
    at the first and last time."""
    arg = f"--results {folder}" if explicit else f"./{folder}"
    if not Path(folder).exists():
        raise FileNotFoundError(f"{arg}: the folder does not exist; give the output folder of a `pcmjax study` run.")
    try:
        res = load_results(folder, partial=True)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{arg}: {e} Give the output folder of a `pcmjax study` run (it holds "
                                "manifest.json and, when finished, results.npz).") from None
    except (ValueError, KeyError) as e:
        raise ValueError(f"{arg}: not a readable pcmjax study output ({e}).") from None
    if "accuracy" not in res.metrics:
        raise ValueError(f"{arg}: the study has no 'accuracy' metric (its metrics: {list(res.metrics)}); give the "
                         "output folder of a network study.")
    rows = {(r["time_s"], r["variant"]): r for r in res.summary() if r["metric"] == "accuracy"}
    times = sorted({float(res.times[0]), float(res.times[-1])})
    acc = {}
    for v in res.variants:
        for t in times:
            r = rows[(t, v)]
            if r["mean"] is not None:
                acc[f"{v} at {r['time']}"] = float(r["mean"])
    n = res.values.shape[0]
    partial = res.meta.get("partial")
    note = (f"accuracy: mean over {n} chip instance{'s' if n != 1 else ''} of the study in {folder}"
            f"{f' (interrupted run: {partial} instances)' if partial else ''}")
    return acc, note


def _log(msg):
    print(msg, file=sys.stderr)


def _placement(model, cfg, arch: dict):
    """``(layout, chips, MVMs per layer, layer costs, whole-network cost, input shape)`` of
    ``model`` on as many chips of ``cfg`` as it needs."""
    shape = _input_shape(arch)
    # As many chips as the network needs (plan with room to spare, then exactly).
    tiles = plan(model, cfg, n_chips=1 << 20).n_tiles
    n_chips = max(1, -(-tiles // cfg.n_cores))
    layout = plan(model, cfg, n_chips=n_chips)
    mvms = layer_mvms(model, layout, shape)
    layers = cost.from_layout(layout, mvms)
    costs = cost.network_cost(layers, cfg.read_phases, cores_per_chip=cfg.n_cores)
    return layout, n_chips, mvms, layers, costs, shape


def _accuracy(network: str, results, model, phases: int):
    """``(accuracy, source note, folder)`` of the study of ``results`` (or of
    ./pcmjax-results when it holds a study of this very network)."""
    folder = results
    if folder is None and Path(DEFAULT_RESULTS).is_dir():
        wl = _study_spec(DEFAULT_RESULTS).get("workload", {})
        if wl.get("params_sha256") is not None and wl.get("params_sha256") == params_fingerprint(model):
            folder = DEFAULT_RESULTS
        else:
            what = "a study of another network" if wl.get("kind") == "network" else "no network study"
            _log(f"note: ./{DEFAULT_RESULTS} holds {what}; its accuracy is not shown (use --results DIR).")
    if folder is None:
        return None, None, None
    accuracy, source = _study_accuracy(folder, explicit=results is not None)
    spec = _study_spec(folder)
    h = spec.get("workload", {}).get("params_sha256")
    if h is None:
        source += "; its network could not be checked (no manifest.json with a network workload)"
    elif h != params_fingerprint(model):
        source += f"; WARNING: that study was made for a different network than {network}"
    study_phases = spec.get("chip", {}).get("read_phases")
    if study_phases in (1, 4) and study_phases != phases:
        source += (f"; the study read the chip in {'one' if study_phases == 1 else 'four'}-phase mode, the "
                   f"cost above is for {'one' if phases == 1 else 'four'}-phase (--chip read_phases="
                   f"{study_phases} for the study's)")
    return accuracy, source, folder


def network_info(network: str, results, cfg) -> dict:
    """Placement and cost of ``network`` (a checkpoint or ``"default"``) on chips of
    ``cfg``, with the accuracy of the study in ``results``: ``{"text": ..., "json": ...}``."""
    if (cfg.rows, cfg.cols) != (cost.HERMES_ROWS, cost.HERMES_COLS):
        raise ValueError(f"--network: the cost model uses the published HERMES figures of {cost.HERMES_ROWS}×"
                         f"{cost.HERMES_COLS} cores, but the chip has {cfg.rows}×{cfg.cols} cores; drop --chip "
                         "rows/cols (or the [chip] rows/cols of the study file).")
    model, arch, ckpt, path = _load_network(network, _log)
    layout, n_chips, mvms, layers, costs, shape = _placement(model, cfg, arch)
    phases = cfg.read_phases
    accuracy, source, folder = _accuracy(network, results, model, phases)
    digital = ckpt.get("test_accuracy") if isinstance(ckpt, dict) else None
    shown = {}
    if isinstance(digital, (int, float)) and not isinstance(digital, bool):
        shown["digital (checkpoint)"] = float(digital)
    shown.update(accuracy or {})

    name = f"the default digits MLP ({path})" if network == "default" else str(path)
    mode = "one-phase" if phases == 1 else "four-phase"
    head = (f"network {name}: {arch.get('kind')}, input {'×'.join(map(str, shape))}; "
            f"{layout.n_tiles} cores on {n_chips} chip{'s' if n_chips > 1 else ''} of {cfg.n_cores} cores of "
            f"{cfg.rows}×{cfg.cols}, {mode} reads (--chip read_phases=1|4)")
    text = "\n\n".join([
        head,
        layout.report(),
        cost.report(layers, phases, accuracy=shown or None, title=f"Chip cost per inference ({cost.SOURCE})",
                    cores_per_chip=cfg.n_cores),
    ])
    if source:
        text += f"\n  ({source})"
    layout_json = [{"name": lp.name, "shape": list(lp.shape), "tiles": lp.n_tiles,
                    "row_splits": len(lp.row_chunks), "col_splits": len(lp.col_chunks),
                    "first_core": lp.first_core, "utilisation": lp.utilisation, "mvms": mvms[lp.name]}
                   for lp in layout.layers]
    js = {
        "network": {"checkpoint": str(path), "architecture": arch, "input_shape": list(shape),
                    "checkpoint_info": ckpt, "n_chips": n_chips, "cores": layout.n_tiles, "layers": layout_json},
        "cost": {**costs, "source": cost.SOURCE},
        "accuracy": accuracy,
        "accuracy_source": str(folder) if folder is not None else None,
    }
    if digital is not None:
        js["network"]["digital_accuracy"] = digital
    return {"text": text, "json": js}

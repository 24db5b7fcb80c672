"""``pcmjax info``: the chip configuration and capacity, or a network's placement and cost."""

from __future__ import annotations

import json
from pathlib import Path

from pcmjax.cli._network_info import network_info
from pcmjax.config import ChipConfig
from pcmjax.devices import HermesPCM
from pcmjax.montecarlo.config import ConfigError, build_device, load_toml, tomllib


def _toml_value(text: str):
    """A ``--chip`` value parsed as TOML (``8``, ``true``, ``"global"``); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _from_study_file(path: str, network, results):
    """``(chip table, device, network, results)`` of a study file: its ``[chip]`` and
    ``[device]`` and, for a network study with a checkpoint, that network and (unless
    ``--results`` says otherwise) the study's output folder when it exists."""
    cfg = load_toml(path)
    base = Path(path).resolve().parent
    device = build_device(cfg.get("device", {}), base)
    workload = cfg.get("workload", {})
    # A network of your own ([workload] model = "module:factory") is not placed here: its
    # checkpoint alone does not say how to build it.
    if (network is None and isinstance(workload, dict) and workload.get("kind", "network") == "network"
            and isinstance(workload.get("checkpoint"), str) and "model" not in workload):
        ckpt = workload["checkpoint"]
        network = ckpt if ckpt == "default" or Path(ckpt).is_absolute() else str(base / ckpt)
        output = cfg.get("study", {}).get("output")
        if results is None and isinstance(output, str) and Path(output).is_dir():
            results = output
    return cfg.get("chip", {}), device, network, results


def _chip_config(chip_table: dict, options) -> ChipConfig:
    """The chip of ``chip_table`` with the ``--chip OPTION=VALUE`` overrides applied."""
    cfg = ChipConfig.from_dict(chip_table)
    for item in options:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--chip expects OPTION=VALUE (e.g. adc.bits=8), got {item!r}.")
        try:
            cfg = cfg.set(key.strip(), _toml_value(value.strip()))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--chip {item}: {e}") from e
    return cfg


def _lines(d: dict, indent: str = "  "):
    for k, v in d.items():
        if isinstance(v, dict):
            yield f"{indent}{k}:"
            yield from _lines(v, indent + "  ")
        else:
            yield f"{indent}{k} = {v!r}"


def _print_chip(info: dict) -> None:
    cap = info["capacity"]
    print("chip configuration (pcmjax.ChipConfig):")
    print("\n".join(_lines(info["chip"])))
    print(f"capacity: {cap['cores']} cores × {cap['rows']}×{cap['cols']} = {cap['weights']:,} weights on "
          f"{cap['pcm_devices']:,} PCM devices ({cap['devices_per_weight']} per weight)")
    d = info["device"]
    print(f"device model: {d['model']}(num_devices={d['num_devices']}), g_max = {d['g_max_uS']:.4g} µS per sign, "
          f"t0 = {d['t0_s']:.4g} s")


def run(args) -> int:
    """Print the chip (and ``--network``'s placement and cost) as text or JSON."""
    chip_table, device, network, results = {}, None, args.network, args.results
    if args.config:
        chip_table, device, network, results = _from_study_file(args.config, network, results)
    cfg = _chip_config(chip_table, args.chip)
    device = HermesPCM(num_devices=2) if device is None else device
    if results is not None and network is None:
        raise ValueError("--results needs --network (the network whose cost is printed beside the accuracy).")
    n_dev = int(device.num_devices)
    info = {
        "chip": cfg.to_dict(),
        "capacity": {"cores": cfg.n_cores, "rows": cfg.rows, "cols": cfg.cols, "weights": cfg.capacity,
                     "pcm_devices": cfg.capacity * 2 * n_dev, "devices_per_weight": 2 * n_dev},
        "device": {"model": type(device).__name__, "num_devices": n_dev,
                   "g_max_uS": float(device.g_max), "t0_s": float(getattr(device, "t0", float("nan")))},
    }
    net = network_info(network, results, cfg) if network is not None else None
    if net is not None:
        info.update(net["json"])
    if args.json:
        print(json.dumps(info, indent=2))
    elif net is not None:
        print(net["text"])
    else:
        _print_chip(info)
    return 0

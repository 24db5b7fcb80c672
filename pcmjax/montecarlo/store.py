"""The output folder of a study: manifest, per-chunk results, and resumption.

Layout::

    <folder>/manifest.json          study spec, its hash, instances requested, shapes
    <folder>/chunks/chunk-*.npz     one file per finished chunk: instance ids and values
    <folder>/results.npz            every instance × time × variant × metric (assembled)
    <folder>/summary.json, .csv     statistics per time, variant and metric
    <folder>/conductances.npz       conductance histograms per variant and time
    <folder>/figures/*.png          plots

Every file is written to a temporary name and renamed, so a run killed at any moment
leaves only complete chunk files behind; the next run with the same study reads them,
computes only the missing instances and ends with the same results.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np

from pcmjax.montecarlo.study import Study, spec_differences

MANIFEST = "manifest.json"
CHUNKS = "chunks"
MANIFEST_FORMAT = "pcmjax.montecarlo.manifest/1"
_CHUNK_RE = re.compile(r"^chunk-\d+-\d+(-\d+)?\.npz$")


class StudyMismatchError(ValueError):
    """The output folder holds results of a different study."""


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path`` and rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


class RunFolder:
    """Reads and writes a study's output folder (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)

    @property
    def chunk_dir(self) -> Path:
        return self.path / CHUNKS

    def manifest(self) -> dict | None:
        p = self.path / MANIFEST
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not valid JSON ({e}); remove the folder or choose another output.") from e

    def open(self, study: Study, *, write: bool = True) -> dict:
        """Create the folder for ``study`` or check that it holds the same study.

        Raises:
          StudyMismatchError: the folder holds a different study (the message lists the
            fields that differ).
        """
        spec, h = study.spec(), study.hash()
        old = self.manifest()
        if old is None and self.path.exists() and any(self.path.iterdir()) and not self.chunk_dir.exists():
            raise StudyMismatchError(
                f"output folder {str(self.path)!r} exists, is not empty and holds no pcmjax study; "
                "choose another output folder.")
        if old is not None:
            if old.get("format") != MANIFEST_FORMAT or old.get("study_hash") != h:
                diff = spec_differences(old.get("spec", {}), spec)
                changed = ", ".join(diff[:8]) + (" ..." if len(diff) > 8 else "")
                raise StudyMismatchError(
                    f"output folder {str(self.path)!r} holds results of a different study "
                    f"(hash {old.get('study_hash')} there, {h} now; changed: {changed or 'format'}). "
                    "Run the original study to resume it, or choose another output folder "
                    "(or delete this one) for the changed study.")
        manifest = {
            "format": MANIFEST_FORMAT,
            "study_hash": h,
            "name": study.name,
            "instances": max(study.instances, (old or {}).get("instances", 0)),
            "times_s": list(study.times),
            "variants": list(study.variant_names),
            "metrics": list(study.metrics),
            "created": (old or {}).get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
            "vmap_width": (old or {}).get("vmap_width"),
            "spec": spec,
        }
        if write:
            self.chunk_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        return manifest

    def update_manifest(self, **fields) -> dict:
        """Set fields of an existing manifest (e.g. the vmap width a run used)."""
        m = self.manifest() or {}
        m.update(fields)
        atomic_write_text(self.path / MANIFEST, json.dumps(m, indent=2) + "\n")
        return m

    def chunk_files(self) -> list[Path]:
        if not self.chunk_dir.exists():
            return []
        return sorted(p for p in self.chunk_dir.iterdir() if _CHUNK_RE.match(p.name))

    def load_done(self, expected_shape: tuple) -> dict[int, tuple]:
        """``instance id → (values [T, V, M], histogram [V, T, bins] or None)`` of every
        finished chunk."""
        done: dict[int, tuple] = {}
        for p in self.chunk_files():
            try:
                with np.load(p) as z:
                    ids, values = z["instances"], z["values"]
                    hists = dict(zip(z["hist_instances"].tolist(), z["hist"])) if "hist" in z.files else {}
            except (OSError, ValueError, KeyError) as e:
                raise ValueError(f"chunk file {p} is unreadable ({e}); delete it to recompute its instances.") from e
            if values.shape[1:] != tuple(expected_shape):
                raise ValueError(f"chunk file {p} has values of shape {values.shape[1:]} per instance, expected "
                                 f"{tuple(expected_shape)}; the folder is inconsistent with its manifest.")
            for j, i in enumerate(ids.tolist()):
                done.setdefault(int(i), (values[j], hists.get(i)))
        return done

    def write_chunk(self, instances: np.ndarray, values: np.ndarray, hist: np.ndarray | None = None,
                    hist_instances: np.ndarray | None = None) -> Path:
        """Write one finished chunk (atomically): ``values [n, T, V, M]`` of ``instances``
        and conductance histograms ``[k, V, T, bins]`` of ``hist_instances``."""
        instances = np.asarray(instances, np.int64)
        name = f"chunk-{instances[0]:07d}-{instances[-1]:07d}"
        path = self.chunk_dir / f"{name}.npz"
        k = 1
        while path.exists():
            path = self.chunk_dir / f"{name}-{k}.npz"
            k += 1
        arrays = {"instances": instances, "values": np.asarray(values, np.float32)}
        if hist is not None and len(hist):
            arrays["hist"] = np.asarray(hist, np.float32)
            arrays["hist_instances"] = np.asarray(hist_instances, np.int64)
        atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
        return path

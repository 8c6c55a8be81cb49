"""Writing what sample/evaluate produce: an output folder that never overwrites a user's files unasked, clouds as
.npy/.ply/.bin, tables as CSV/JSON, and the peak memory of the run."""
from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import sys
from typing import Dict, List, Sequence

import numpy as np
import torch

from .data.formats import write_ply


def claim_folder(out: str, overwrite: bool, prog: str) -> List[str]:
    """Create out; an existing non-empty out is refused unless overwrite (then emptied). Returns log lines."""
    if not str(out).strip():
        raise ValueError("--out must name a folder, got an empty string")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} is a file, not a folder")
    present = sorted(os.listdir(out)) if os.path.isdir(out) else []
    lines = []
    if present:
        if not overwrite:
            shown = ", ".join(present[:3]) + (" ..." if len(present) > 3 else "")
            raise ValueError(f"--out {out} already holds {len(present)} file(s) ({shown}); choose another --out or "
                             f"pass --overwrite to replace them ({prog})")
        for name in present:
            path = os.path.join(out, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
        lines.append(f"--overwrite: removed {len(present)} earlier file(s) in {out}")
    os.makedirs(out, exist_ok=True)
    return lines


def write_cloud(stem: str, cloud: np.ndarray, names: Sequence[str]) -> None:
    """stem.npy, stem.ply and stem.bin (float32 rows, columns `names`) of one cloud [M, len(names)]."""
    cloud = np.ascontiguousarray(cloud, dtype=np.float32)
    if cloud.ndim != 2 or cloud.shape[1] != len(names):
        raise ValueError(f"cloud must be [M, {len(names)}] ({', '.join(names)}), got {cloud.shape}")
    np.save(stem + ".npy", cloud)
    write_ply(stem + ".ply", cloud, names)
    cloud.astype("<f4").tofile(stem + ".bin")


def write_csv(path: str, rows: Sequence[Dict[str, object]]) -> None:
    """rows as CSV, floats with 6 significant digits (columns of the first row, in order)."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def write_json(path: str, value) -> None:
    """value as indented JSON."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=2)
        fh.write("\n")


def peak_memory(device: torch.device) -> Dict[str, object]:
    """Peak memory of this process so far: CUDA allocations on a GPU, else the resident set (MB)."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "kind": "cuda max allocated"}
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mb = kb / 2**20 if sys.platform == "darwin" else kb / 2**10  # macOS reports bytes, Linux kilobytes
    return {"peak_memory_mb": mb, "kind": "process max resident set"}

"""Atomic checkpoints that hold only tensors and plain values (loadable with torch.load(weights_only=True))."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict

import torch

FORMAT = "sparse_radar/checkpoint-1"


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    """Write payload to a temporary file in the same folder, then rename it over path (never half-written)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, **payload}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint file, or the latest.pt of a run folder; only tensors and plain values are accepted."""
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoints", "latest.pt")
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report any unpickling refusal as a bad checkpoint
        raise ValueError(f"{path}: not a sparse_radar checkpoint ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a sparse_radar checkpoint (format {data.get('format') if isinstance(data, dict) else type(data).__name__})")
    return data

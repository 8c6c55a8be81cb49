"""Atomic checkpoints that hold only tensors and plain values (loadable with torch.load(weights_only=True)), with
a content hash of their tensors checked on load, and the newest complete checkpoint of a run folder."""
from __future__ import annotations

import errno
import hashlib
import os
import pickle
import re
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch

FORMAT = "sparse_radar/checkpoint-1"
HASH_KEY = "content_sha256"
STEP_FILE = re.compile(r"step_(\d+)\.pt$")
WEIGHT_KEYS = ("model", "ema", "cm_target", "structure", "latent")  # the parts that must hold finite numbers


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, no permission); the message names the path and the cause."""


def _tensors(value, path: str = "") -> Iterator[Tuple[str, torch.Tensor]]:
    """(key path, tensor) of every tensor in a nested dict/list payload, in a fixed order."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            yield from _tensors(value[key], f"{path}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}/{i}")


def content_hash(payload: Dict[str, Any]) -> str:
    """SHA-256 over every tensor's key path, dtype, shape and bytes (the plain values are not hashed)."""
    h = hashlib.sha256()
    for key, t in _tensors({k: v for k, v in payload.items() if k != HASH_KEY}):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _cause(exc: BaseException) -> Optional[OSError]:
    """The OSError at the root of an exception chain (torch wraps a failed write in a RuntimeError)."""
    while exc is not None:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def save_checkpoint(path: str, payload: Dict[str, Any]) -> None:
    """Write payload (with its content hash) to a temporary file in the same folder, then rename it over path
    (never half-written); a failed write is a CheckpointWriteError naming the path and the cause."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            torch.save({"format": FORMAT, **payload, HASH_KEY: content_hash(payload)}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        cause = _cause(exc)
        if cause is None or isinstance(exc, CheckpointWriteError):
            raise
        name = errno.errorcode.get(cause.errno, "") if cause.errno else ""
        raise CheckpointWriteError(cause.errno, f"cannot write the checkpoint {path}: "
                                                f"{cause.strerror or cause}" + (f" ({name})" if name else "")) from exc


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint file, or the newest complete checkpoint of a run folder; only tensors and plain values are
    accepted, the content hash must match and the weights must be finite."""
    if os.path.isdir(path):
        found = newest_checkpoint(path)
        if found is None:
            raise ValueError(f"no checkpoint in {os.path.join(path, 'checkpoints')}")
        return found[1]
    return _load_file(path)


def _load_file(path: str) -> Dict[str, Any]:
    if not os.path.exists(path):
        raise ValueError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # code or objects beyond tensors and plain values: refused
        raise ValueError(f"{path}: not a sparse_radar checkpoint ({str(exc).splitlines()[0]})") from None
    except Exception as exc:  # noqa: BLE001 - any other failure to read is a damaged file
        size = os.path.getsize(path)
        raise ValueError(f"{path}: not a readable sparse_radar checkpoint: truncated or corrupt ({size} bytes; "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        kind = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: not a sparse_radar checkpoint (format {kind})")
    stored = data.get(HASH_KEY)
    if stored is not None and stored != content_hash(data):
        raise ValueError(f"{path}: corrupt checkpoint: its tensors do not match the content hash written with them "
                         f"(the file changed after it was saved); use another checkpoint of the run")
    for key, t in _tensors({k: data.get(k) for k in WEIGHT_KEYS}):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{path}: the weights hold NaN or inf ({key.lstrip('/')}); use another checkpoint")
    return data


def step_files(folder: str) -> List[Tuple[int, str]]:
    """(step, path) of the step_N.pt files of a run folder's checkpoints/, newest first."""
    ckpt = os.path.join(folder, "checkpoints")
    names = os.listdir(ckpt) if os.path.isdir(ckpt) else []
    return sorted(((int(m.group(1)), os.path.join(ckpt, n)) for n in names if (m := STEP_FILE.match(n))),
                  reverse=True)


def newest_checkpoint(folder: str) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(path, state) of a run folder's newest checkpoint that loads completely: latest.pt, or a newer step_N.pt
    (a stop between writing step_N.pt and latest.pt); None when the folder holds none."""
    latest = os.path.join(folder, "checkpoints", "latest.pt")
    best, error = None, None
    if os.path.isfile(latest):
        try:
            best = (latest, _load_file(latest))
        except ValueError as exc:
            error = exc
    for step, path in step_files(folder):
        if best is not None and step <= int(best[1]["step"]):
            break
        try:
            return path, _load_file(path)
        except ValueError as exc:
            error = error or exc
    if best is None and error is not None:
        raise error
    return best

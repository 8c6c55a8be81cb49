"""Start-up validation of a folder dataset: every pair read once, in parallel, cached by file size and mtime.

A malformed file raises DataFormatError naming it before training starts (not mid-run); frames whose radar or
target has no voxel in the grid are dropped with one counted warning; clipped feature values are counted in
one warning. Results are cached in $SPARSE_RADAR_CACHE (default ~/.cache/sparse_radar), keyed by the files'
paths, sizes and mtimes, so an unchanged dataset is validated once.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

from tqdm import tqdm

from .datasets import FolderDataset
from .formats import DataFormatError

CACHE_VERSION = 1


def cache_dir() -> str:
    """Folder of the validation cache ($SPARSE_RADAR_CACHE, else $XDG_CACHE_HOME/sparse_radar)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("SPARSE_RADAR_CACHE") or os.path.join(base, "sparse_radar")


def _stamp(path: str) -> List[int]:
    try:
        st = os.stat(path)
    except OSError as exc:  # a broken link, a symlink loop, no permission
        raise DataFormatError(path, f"cannot be read ({exc.strerror or exc})") from None
    return [st.st_size, st.st_mtime_ns]


def _cache_file(dataset: FolderDataset) -> str:
    ident = json.dumps([type(dataset).__name__, getattr(dataset, "fmt", ""), repr(getattr(dataset, "grid", "")),
                        repr(getattr(dataset, "cache_ident", "")),
                        os.path.abspath(os.path.dirname(dataset.pairs[0][0])) if dataset.pairs else ""])
    return os.path.join(cache_dir(), f"validated-{hashlib.sha1(ident.encode()).hexdigest()[:16]}.json")


def _load_cache(path: str) -> Dict[str, dict]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data["entries"] if data.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _save_cache(path: str, entries: Dict[str, dict]) -> None:
    try:  # a cache that cannot be written only costs time next start
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"version": CACHE_VERSION, "entries": entries}, fh)
        os.replace(tmp, path)
    except OSError:
        pass


def _check(dataset: FolderDataset, i: int) -> dict:
    try:
        return dataset.inspect(i)
    except DataFormatError as exc:
        return {"error": [exc.path, exc.problem]}
    except OSError as exc:  # a file that cannot be opened
        return {"error": [exc.filename or dataset.pairs[i][0], f"cannot be read ({exc.strerror or exc})"]}


def validate_dataset(dataset: FolderDataset, workers: Optional[int] = None, progress: bool = True) -> FolderDataset:
    """Read every pair once (cached); raise DataFormatError for a malformed file, drop empty frames with a
    warning, warn once with the count of clipped values. Returns the dataset (narrowed in place)."""
    cache_path = _cache_file(dataset)
    cache = _load_cache(cache_path)
    keys, results = [], {}
    todo = []
    for i, pair in enumerate(dataset.pairs):
        key = json.dumps([os.path.abspath(p) for p in pair] + [_stamp(p) for p in pair])
        keys.append(key)
        if key in cache:
            results[i] = cache[key]
        else:
            todo.append(i)
    if todo:
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            bar = tqdm(pool.map(lambda i: (i, _check(dataset, i)), todo), total=len(todo), unit="file pair",
                       desc="validating data", disable=not progress or len(todo) < 64, leave=False)
            for i, result in bar:
                results[i] = result
        _save_cache(cache_path, {**cache, **{keys[i]: results[i] for i in todo}})
    errors = [results[i]["error"] for i in range(len(keys)) if "error" in results[i]]
    if errors:
        more = f" (and {len(errors) - 1} more malformed file pair(s))" if len(errors) > 1 else ""
        raise DataFormatError(errors[0][0], errors[0][1] + more)
    keep = [i for i in range(len(keys)) if results[i]["radar_voxels"] and results[i]["target_voxels"]]
    empty = len(keys) - len(keep)
    if not keep:
        raise ValueError(f"every one of the {len(keys)} frame(s) has an empty radar or target voxel set on the grid "
                         f"{dataset.grid_shape}: check the point range and the files")
    if empty:
        kept = set(keep)
        names = [os.path.basename(dataset.pairs[i][0]) for i in range(len(keys)) if i not in kept][:3]
        warnings.warn(f"{empty} of {len(keys)} frame(s) have no radar or no target voxel on the grid and are skipped "
                      f"(e.g. {', '.join(names)})", stacklevel=2)
        dataset.keep(keep)
    clipped = sum(results[i]["clipped"] for i in keep)
    if clipped:
        warnings.warn(f"{clipped} feature value(s) outside [0, 1] in {sum(1 for i in keep if results[i]['clipped'])} "
                      f"frame(s) were clipped to [0, 1] (the reference stores features in [0, 1])", stacklevel=2)
    return dataset

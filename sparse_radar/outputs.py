"""Writing what sample/evaluate produce: an output folder claimed by one process (a lock file) that never removes
or overwrites a file it did not write, never a run or input folder, with every file written under a temporary
name and renamed (so an interrupted write leaves no partial file) and finished frames journalled for --resume;
clouds as .npy/.ply/.bin, tables as CSV/JSON, and the peak memory of the run."""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import resource
import sys
import threading
from typing import Dict, Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from .data.formats import write_ply

LOCK = ".sparse_radar.lock"
MANIFEST = ".sparse_radar-outputs.json"  # who wrote the folder, with which settings, and the names it may write
JOURNAL = ".sparse_radar-done.jsonl"  # one line per finished frame (appended, so a kill loses at most one line)
TMP = ".tmp-"
CLOUD_SUFFIXES = (".npy", ".ply", ".bin", ".png")


def _same_or_inside(path: str, folder: str) -> bool:
    """True when path is folder or lies inside it."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class OutputFolder:
    """An output folder claimed by this process: only the names in its manifest are ours to replace or remove."""

    def __init__(self, out: str, prog: str, names: Iterable[str], signature: dict, overwrite: bool = False,
                 resume: bool = False, protected: Sequence[Tuple[str, str]] = ()):
        """Claim out for `names`; protected: (what, path) pairs out must neither be nor hold (a run, the input)."""
        if not str(out).strip():
            raise ValueError("--out must name a folder, got an empty string")
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"--out {out} is a file, not a folder")
        for what, path in protected:
            if path and os.path.exists(path) and _same_or_inside(path, out):
                raise ValueError(f"--out {out} {'is' if _same_or_inside(out, path) else 'holds'} {what} ({path}); "
                                 f"{prog} never writes over it: choose another --out")
        self.out, self.prog, self.lines, self.done = out, prog, [], {}
        self._lock = None
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--out {out} cannot be created: {exc.strerror or exc}") from None
        self._take_lock()
        try:
            self._prepare(set(names), signature, overwrite, resume)
        except BaseException:
            self.release()
            raise

    # ----- the lock ------------------------------------------------------------------------------------
    def _take_lock(self) -> None:
        path = os.path.join(self.out, LOCK)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._lock_pid(path)
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise ValueError(f"--out {self.out} is being written by another process (pid {pid}, see {path}); "
                                     f"wait for it to finish or choose another --out") from None
                os.remove(path)
                self.lines.append(f"removed a stale lock of a process that no longer runs (pid {pid}) in {self.out}")
                continue
            except OSError as exc:
                raise ValueError(f"--out {self.out} is not writable: {exc.strerror or exc}") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            self._lock = path
            return
        raise ValueError(f"--out {self.out}: could not take the lock {path}")

    @staticmethod
    def _lock_pid(path: str) -> Optional[int]:
        try:
            with open(path, encoding="utf-8") as fh:
                return int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def release(self) -> None:
        """Give the folder back (remove the lock)."""
        if self._lock and os.path.exists(self._lock):
            os.remove(self._lock)
        self._lock = None

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ----- what is ours --------------------------------------------------------------------------------
    def _prepare(self, names: set, signature: dict, overwrite: bool, resume: bool) -> None:
        manifest = _read_json(os.path.join(self.out, MANIFEST)) or {}
        ours = set(manifest.get("names", []))
        present = sorted(n for n in os.listdir(self.out) if n not in (LOCK, MANIFEST, JOURNAL))
        stale = [n for n in present if n.startswith(TMP)]
        for n in stale:
            os.remove(os.path.join(self.out, n))
        if stale:
            self.lines.append(f"removed {len(stale)} partial file(s) an interrupted run left in {self.out}")
        present = [n for n in present if not n.startswith(TMP)]
        theirs = [n for n in present if n not in ours]
        earlier = manifest.get("signature", {})
        changed = sorted(k for k in set(signature) | set(earlier) if signature.get(k) != earlier.get(k))
        # a rerun with the same settings into a resumable folder continues it, as --resume does
        same_run = bool(manifest) and manifest.get("resumable") and not changed and not overwrite
        if resume and manifest and changed:
            raise ValueError(f"--resume: {self.out} was written with other settings ({', '.join(changed)} differ); "
                             f"pass the same flags, or --overwrite to start again")
        if resume and not manifest and present:
            raise ValueError(f"--resume: {self.out} holds no earlier output of {self.prog} to continue; choose "
                             f"another --out")
        if (resume or same_run) and manifest:
            self.done = _read_journal(os.path.join(self.out, JOURNAL))
            self.lines.append(f"resuming: {len(self.done)} finished frame(s) in {self.out} kept")
        elif present:
            if not overwrite:
                shown = ", ".join(present[:3]) + (" ..." if len(present) > 3 else "")
                hint = "pass --resume to finish it, " if manifest.get("resumable") else ""
                raise ValueError(f"--out {self.out} already holds {len(present)} file(s) ({shown}); {hint}choose "
                                 f"another --out or pass --overwrite to replace what {self.prog} wrote there")
            removed = [n for n in present if n in ours]
            for n in removed:
                path = os.path.join(self.out, n)
                if os.path.isfile(path) or os.path.islink(path):
                    os.remove(path)
            if os.path.exists(os.path.join(self.out, JOURNAL)):
                os.remove(os.path.join(self.out, JOURNAL))
            kept = f"; kept {len(theirs)} other file(s) ({', '.join(theirs[:3])})" if theirs else ""
            self.lines.append(f"--overwrite: removed {len(removed)} earlier output file(s) in {self.out}{kept}")
        clash = sorted(names & set(theirs))
        if clash:
            raise ValueError(f"--out {self.out} holds file(s) {self.prog} did not write but would write now "
                             f"({', '.join(clash[:3])}); move them or choose another --out")
        _write_json_atomic(os.path.join(self.out, MANIFEST), {
            "prog": self.prog, "signature": signature, "resumable": "frames" in signature,
            "names": sorted(names | (ours if self.done else set()))})

    def path(self, name: str) -> str:
        """The path of an output file name."""
        return os.path.join(self.out, name)

    def finish_frame(self, name: str, record: dict) -> None:
        """Journal a frame whose files are all written (its record comes back to --resume)."""
        with open(self.path(JOURNAL), "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"frame": name, **record}, default=_plain) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.done[name] = record


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _read_journal(path: str) -> Dict[str, dict]:
    """{frame: record} of the complete lines of a journal (a line cut short by a kill is ignored)."""
    done = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                done[entry.pop("frame")] = entry
    except OSError:
        pass
    return done


@contextlib.contextmanager
def atomic(path: str) -> Iterator[str]:
    """Yield a temporary path beside path (same suffix); renamed over path when the block ends, removed on error."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, TMP + name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_json_atomic(path: str, value) -> None:
    with atomic(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(_finite(value), fh, indent=2, allow_nan=False)
            fh.write("\n")


def _finite(value):
    """value with every NaN or inf float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _plain(value):
    if isinstance(value, (np.generic,)):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def write_cloud(stem: str, cloud: np.ndarray, names: Sequence[str]) -> None:
    """stem.npy, stem.ply and stem.bin (float32 rows, columns `names`) of one cloud [M, len(names)]."""
    cloud = np.ascontiguousarray(cloud, dtype=np.float32)
    if cloud.ndim != 2 or cloud.shape[1] != len(names):
        raise ValueError(f"cloud must be [M, {len(names)}] ({', '.join(names)}), got {cloud.shape}")
    with atomic(stem + ".npy") as tmp:
        np.save(tmp, cloud)
    with atomic(stem + ".ply") as tmp:
        write_ply(tmp, cloud, names)
    with atomic(stem + ".bin") as tmp:
        cloud.astype("<f4").tofile(tmp)


def write_csv(path: str, rows: Sequence[Dict[str, object]]) -> None:
    """rows as CSV, floats with 6 significant digits (columns of the first row, in order)."""
    with atomic(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def write_json(path: str, value) -> None:
    """value as indented JSON (atomically; NaN and inf as null, so the file stays valid JSON)."""
    _write_json_atomic(path, value)


def peak_memory(device: torch.device) -> Dict[str, object]:
    """Peak memory of this process so far: CUDA allocations on a GPU, else the resident set (MB)."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "kind": "cuda max allocated"}
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mb = kb / 2**20 if sys.platform == "darwin" else kb / 2**10  # macOS reports bytes, Linux kilobytes
    return {"peak_memory_mb": mb, "kind": "process max resident set"}


class PeakMemory:
    """`with PeakMemory(device) as watch:` then watch.mb: the most memory the block added over what was in use when
    it began (CUDA: allocated bytes, from the allocator's peak; CPU: the resident set, sampled every 5 ms from
    /proc/self/statm where there is one, else the process's lifetime maximum), in MB."""

    def __init__(self, device):
        self.device, self.mb, self.kind = torch.device(device), 0.0, ""

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        self._stop = threading.Event()
        self._base = self._peak = self._rss_mb() if os.path.exists("/proc/self/statm") else 0.0
        if os.path.exists("/proc/self/statm"):
            def sample():
                while not self._stop.wait(0.005):
                    self._peak = max(self._peak, self._rss_mb())
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb, self.kind = torch.cuda.max_memory_allocated(self.device) / 2**20 - self._base, "cuda allocated"
            return
        if hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss_mb())
            self.mb, self.kind = self._peak - self._base, "resident set, sampled"
        else:
            self.mb, self.kind = peak_memory(self.device)["peak_memory_mb"], "process max resident set"

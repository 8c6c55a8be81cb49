"""Checks that `sample` and `evaluate` share: their numeric flags, before any work, and the folders an --out must
never be or hold (the runs read and the input)."""
from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from .inference import MAX_SEED, whole_number

MAX_BATCH = 4096


def check_flags(args) -> None:
    """ValueError/TypeError for a --batch_size, --seed or --count out of range (one message naming the flag)."""
    whole_number(args.batch_size, "--batch_size", 1, MAX_BATCH)
    whole_number(args.seed, "--seed", 0, MAX_SEED)
    if args.count is not None:
        whole_number(args.count, "--count", 1, 10**9)


def run_folder_of(path: str) -> str:
    """The run folder of a run folder or of a checkpoint inside <run>/checkpoints/ (else the file itself)."""
    if os.path.isdir(path):
        return path
    parent = os.path.dirname(os.path.abspath(path))
    return os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else path


def protected(runs: Sequence[Optional[str]], source: str) -> List[Tuple[str, str]]:
    """(what, path) of every run read and of the input: an --out must be none of them and hold none of them."""
    found = [("the run folder", run_folder_of(r)) for r in runs if r]
    if source and source != "synthetic":
        found.append(("the input", source))
    return found


def interruptible(prog: str, body: Callable[[Optional[list]], int], argv: Optional[list]) -> int:
    """body(argv)'s exit code; Ctrl-C anywhere ends in one line, exit 130, not a traceback."""
    try:
        return body(argv)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130

"""Checks of the README's "Failure behaviour" rows, registered by row name; tests/test_failure_behaviour.py
walks the table and runs them. Each check takes (request, tmp_path, capsys)."""
import csv
import os

CHECKS = {}
SMALL = ["--train_size", "4", "--model_channels", "8", "--progress", "False", "--preview_steps", "1",
         "--attention_type", "window"]


def row(*names):
    """Register a check for the README rows `names`."""
    def register(fn):
        for name in names:
            CHECKS[name] = fn
        return fn
    return register



def rows(folder):
    with open(os.path.join(folder, "metrics.csv"), newline="") as fh:
        return [(r["step"], r["loss"]) for r in csv.DictReader(fh)]


def snapshot(folder):
    """Every file under folder with its bytes."""
    out = {}
    for base, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(base, n)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


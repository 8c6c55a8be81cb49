"""Timing and reporting helpers shared by the benchmark scripts."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Sequence

import torch


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() in milliseconds over `repeats` runs after `warmup` runs (CUDA synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def machine() -> Dict[str, object]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def markdown_table(header: Sequence[str], rows: List[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(out_dir: str, name: str, payload: Dict[str, object], table: str) -> None:
    """Write <name>.json and <name>.md into out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
    with open(os.path.join(out_dir, f"{name}.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (saying so) where matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG written (pip install matplotlib)")
        return None
    return plt


def grouped_bars(ax, labels: Sequence[str], series: Dict[str, Sequence[float]], title: str, log: bool = False,
                 fontsize: int = 7) -> None:
    """Draw one group of bars per label, one bar per series (NaN: no bar), on a matplotlib axes."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x - 0.4 + width * (i + 0.5) for x in range(len(labels))], values, width, label=name)
    if log:
        ax.set_yscale("log")
    ax.set_xticks(list(range(len(labels))), labels, fontsize=fontsize)
    ax.set_title(title)
    ax.legend(fontsize=8)


def save_figure(fig, path: str) -> None:
    """Lay out, write as PNG and close a matplotlib figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)


def add_device_argument(parser, what: str = "where the workers run") -> None:
    """--device cpu|cuda, defaulting to cuda where torch sees a GPU."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help=f"{what}: cpu or cuda (default: cuda where available)")


def check_device(parser, device: str) -> None:
    """Exit with a usage error unless device is cpu, or cuda on a machine with a GPU."""
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device must be cpu, or cuda on a machine with a GPU, got {device!r}")


def device_name(device: str) -> str:
    """The card's name for cuda, else 'CPU, N threads'."""
    return torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"

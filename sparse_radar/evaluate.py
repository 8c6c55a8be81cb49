"""`python -m sparse_radar.evaluate RUN [RUN ...]`: one table on the same frames for the radar input, the supports
(dilated radar; predicted, where a structure network is at hand) with their recall of the target and size, each
model (EDM and ldm: Heun and the one-step posterior mean; consistency: one-step and multistep), the oracle-support
upper bound and each VAE's reconstruction, plus an occupancy-threshold sweep; writes evaluation.md,
evaluation.json and threshold_sweep.png."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .data.datasets import DATA_FORMATS
from .data.support import coverage, support_structure
from .frames import Frame, centres, load_frames, radar_field, target_field
from .cli_checks import check_flags, interruptible, protected
from .inference import MAX_STEPS, Densifier, SamplerSettings, generate_batches, resolve_device, whole_number
from .models.structure_net import StructureNet, predicted_support
from .training.checkpoint import load_checkpoint
from .training.stages import checkpoint_kind, load_codec, load_structure
from .metrics import (bev_histogram, bev_jsd, bev_mmd, best_of_k, frame_metrics, parse_taus, sample_diversity,
                      summarize)
from .outputs import OutputFolder, PeakMemory, atomic, write_json

PROG = "python -m sparse_radar.evaluate"
SWEEP = (-0.95, -0.9, -0.8, -0.6, -0.4, -0.2, 0.0, 0.2, 0.4, 0.6, 0.8)
OUTPUTS = ("evaluation.md", "evaluation.json", "threshold_sweep.png")
SHOWN = ("chamfer_sum_of_means", "chamfer_mean_of_means", "modified_hausdorff", "hausdorff", "voxel_iou")


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser."""
    p = argparse.ArgumentParser(prog=PROG, allow_abbrev=False, description=__doc__.split(":", 1)[1].strip())
    p.add_argument("models", nargs="+", metavar="RUN", help="run folders or checkpoints (one grid): diffusion models "
                   "(voxel-space, ldm, cd) and --stage vae runs (their reconstruction of the target)")
    p.add_argument("--input", default="synthetic", help="'synthetic' (the test split) or a data folder with "
                   "ground truth")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="synthetic split (val: to choose --threshold without looking at the test frames)")
    p.add_argument("--data_format", default="points", choices=DATA_FORMATS)
    p.add_argument("--count", type=int, default=50, help="frames (synthetic test scans, or the first of a folder)")
    p.add_argument("--out", default="evaluation", help="output folder (refused if it holds files, see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --out")
    p.add_argument("--steps", type=int, default=18, help="Heun steps of EDM models")
    p.add_argument("--sigma_max", type=float, default=None, help="Heun's starting noise level (default: each "
                   "checkpoint's, 80)")
    p.add_argument("--sigma_min", type=float, default=None, help="Heun's last noise level, from which its final "
                   "Euler step lands on the denoiser's estimate (default: each checkpoint's, 0.002)")
    p.add_argument("--s_churn", type=float, default=0.0, help="Heun's stochastic churn (EDM's S_churn; 0 = the "
                   "deterministic sampler)")
    p.add_argument("--multistep", type=int, default=4, help="steps of the multistep consistency sampler")
    p.add_argument("--threshold", type=float, default=0.0, help="occupancy threshold of the table's models")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale of every model (1 = "
                   "off; the models must be trained with --cond_drop > 0)")
    p.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=True,
                   help="add the first EDM model sampled on the oracle support (an upper bound)")
    p.add_argument("--structure", default=None, help="run of a --stage structure run: adds its predicted support "
                   "to the support table and as a baseline (default: the network a model carries, if any)")
    p.add_argument("--tau", default=None, help="F-score distances in metres, comma-separated (default one voxel)")
    p.add_argument("--samples", type=int, default=1, help="samples per frame of each EDM model and sampler (k > 1 "
                   "adds each one's diversity, the mean pairwise Chamfer of the k, and a best-of-k row)")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    return p


class Table:
    """Per-method metric rows on one set of frames, and their summary."""

    def __init__(self, frames: Sequence[Frame], densifier: Densifier, taus: Sequence[float]):
        self.frames, self.grid, self.taus = list(frames), densifier.grid, list(taus)
        self.radar = radar_field(self.frames, self.grid.shape)
        self.target = target_field(self.frames, self.grid.shape)
        self.truth = [centres(self.target, b, self.grid) for b in range(len(self.frames))]
        self.truth_bev = [self.bev(xyz) for xyz in self.truth]
        self.methods: Dict[str, dict] = {}

    def bev(self, xyz: np.ndarray) -> np.ndarray:
        """A cloud's bird's-eye occupancy histogram on the grid's columns."""
        return bev_histogram(xyz, self.grid.voxel_index, self.grid.counts_xyz[:2])

    def score(self, b: int, pred_xyz: np.ndarray) -> dict:
        """Metrics of one frame's prediction (and its bird's-eye histogram, for the set's JSD and MMD)."""
        row = frame_metrics(pred_xyz, self.truth[b], self.grid.voxel_index, self.taus, self.grid.diagonal)
        row["bev"] = self.bev(pred_xyz)
        return row

    def add(self, name: str, rows: List[dict], note: str = "") -> None:
        """One method's rows (one per frame, in order; none dropped); its BEV JSD and MMD against the targets."""
        if len(rows) != len(self.frames):
            raise RuntimeError(f"{name}: {len(rows)} rows for {len(self.frames)} frames")
        hists = [r.pop("bev") for r in rows]
        distribution = {"bev_jsd": bev_jsd(hists, self.truth_bev), "bev_mmd": bev_mmd(hists, self.truth_bev)}
        self.methods[name] = {"note": note, "summary": summarize(rows), "rows": rows, "distribution": distribution}

    def markdown(self) -> str:
        """The table: means (medians in parentheses) of each method, then its set's BEV JSD and MMD."""
        keys = list(SHOWN) + [f"{k}@{t:g}" for t in self.taus for k in ("fscore", "precision", "recall")]
        diverse = any("diversity" in m["summary"] for m in self.methods.values())
        extra = ["bev_jsd", "bev_mmd"] + (["diversity"] if diverse else [])
        lines = ["| method | " + " | ".join(keys + extra) + " | s/frame | peak MB |",
                 "|---" * (len(keys) + len(extra) + 3) + "|"]
        for name, m in self.methods.items():
            s = m["summary"]
            cells = [f"{s[k]['mean']:.3f} ({s[k]['median']:.3f})" for k in keys]
            cells += [f"{m['distribution']['bev_jsd']:.4f}", f"{m['distribution']['bev_mmd']:.2e}"]
            if diverse:
                cells.append(f"{s['diversity']['mean']:.3f}" if "diversity" in s else "-")
            sec = f"{s['seconds']['mean']:.3f}" if "seconds" in s else "-"
            mb = f"{s['peak_mb']['mean']:.0f}" if "peak_mb" in s else "-"
            lines.append(f"| {name}{' ' + m['note'] if m['note'] else ''} | " + " | ".join(cells) +
                         f" | {sec} | {mb} |")
        return "\n".join(lines)


def baselines(table: Table, densifier: Densifier, structure: Optional[StructureNet] = None,
              predicted_radius=(0, 0, 0)) -> List[dict]:
    """Add the radar input and the supports (dilated radar; predicted, given a structure network, and dilated as a
    model uses it) as predictions; returns each support's recall of the target voxels and size, with the
    oracle's."""
    radius = densifier.oracle_radius
    supports = [(f"radar dilated {tuple(radius)}", support_structure("radar_dilated", table.radar, table.radar,
                                                                       radius))]
    if structure is not None:
        supports.append(("predicted (structure network)", predicted_support(structure, table.radar)))
        if any(predicted_radius):
            supports.append((f"predicted dilated {tuple(predicted_radius)}",
                             predicted_support(structure, table.radar, predicted_radius)))
    supports.append((f"oracle: target dilated {tuple(radius)}", support_structure("oracle", table.radar,
                                                                                  table.target, radius)))
    table.add("radar input", [table.score(b, centres(table.radar, b, table.grid)) for b in range(len(table.frames))])
    target_counts = table.target.batch_counts().float()
    rows = []
    for name, support in supports:
        counts = torch.bincount(support.coords[:, 0].long(), minlength=len(table.frames)).float()
        rows.append({"support": name, "recall": float(coverage(support, table.target).mean()),
                     "voxels_per_frame": float(counts.mean()), "per_target_voxel": float((counts / target_counts
                                                                                          .clamp_min(1)).mean())})
        if not name.startswith("oracle"):
            xyz = lambda b: table.grid.voxel_centers(support.coords[support.coords[:, 0] == b][:, 1:].numpy())
            table.add(name, [table.score(b, xyz(b)) for b in range(len(table.frames))], "(a support)")
    return rows


def model_rows(table: Table, densifier: Densifier, settings: SamplerSettings, args, oracle: bool = False,
               sweep: Sequence[float] = ()) -> tuple:
    """Rows of one model and sampler (and F-scores per sweep threshold, from the same samples), each with the
    memory the sampling added (peak_mb); with --samples k > 1 also the best-of-k rows, and each frame's diversity
    (the mean pairwise Chamfer of its k samples) in the rows."""
    rows, swept = [], {t: [] for t in sweep}
    clouds: List[List[np.ndarray]] = [[] for _ in table.frames]
    extra: List[List[dict]] = [[] for _ in table.frames]
    with PeakMemory(densifier.device) as watch:
        for k in range(args.samples):
            first = 0
            for batch, _, out, seconds in generate_batches(densifier, table.frames, settings, args.seed + k,
                                                           args.batch_size, oracle, args.progress, settings.sampler):
                for b in range(len(batch)):
                    xyz = densifier.to_points(out, b, settings.threshold)[:, :3]
                    clouds[first + b].append(xyz)
                    row = {**table.score(first + b, xyz), "seconds": seconds}
                    (rows if k == 0 else extra[first + b]).append(row)
                    for t in sweep if k == 0 else ():
                        swept[t].append(table.score(first + b, densifier.to_points(out, b, t)[:, :3]))
                first += len(batch)
    for row in rows + [r for more in extra for r in more]:  # the memory the method's sampling added, the same in
        row["peak_mb"] = watch.mb  # each of its rows (a best-of-k row may be any sample's)
    best = None
    if args.samples > 1:
        for b, row in enumerate(rows):
            row["diversity"] = sample_diversity(clouds[b], empty_distance=table.grid.diagonal)
        best = [best_of_k([rows[b]] + extra[b]) for b in range(len(rows))]
        best = [{k: v for k, v in r.items() if k != "diversity"} for r in best]
    return rows, {t: summarize(r) for t, r in swept.items()}, best


@torch.no_grad()
def reconstruction_rows(table: Table, autoencoder, batch_size: int) -> List[dict]:
    """Rows of the target voxels encoded and decoded (no teacher forcing) by a VAE3D / VQVAE3D."""
    autoencoder.eval()
    rows = []
    for start in range(0, len(table.frames), batch_size):
        batch = table.frames[start:start + batch_size]
        t0 = time.perf_counter()
        field = autoencoder(target_field(batch, table.grid.shape)).generation.field
        seconds = (time.perf_counter() - t0) / len(batch)
        rows += [{**table.score(start + b, centres(field, b, table.grid)), "seconds": seconds}
                 for b in range(len(batch))]
    return rows


def run(argv=None) -> int:
    """Evaluate as the flags say; returns the exit code (2: bad flags, checkpoints or input)."""
    return interruptible(PROG, _run, argv)


def _run(argv) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_flags(args)
        whole_number(args.multistep, "--multistep", 1, MAX_STEPS)
        whole_number(args.samples, "--samples", 1, 64)
        samplers = {"heun": SamplerSettings("heun", args.steps, args.sigma_max, args.sigma_min, args.s_churn,
                                            threshold=args.threshold, guidance=args.guidance),
                    "onestep": SamplerSettings("onestep", 1, threshold=args.threshold, guidance=args.guidance),
                    "multistep": SamplerSettings("multistep", args.multistep, threshold=args.threshold,
                                                 guidance=args.guidance)}
        resolve_device(args.device)
        kinds = {m: checkpoint_kind(load_checkpoint(m)) for m in args.models}
        models = [(m, Densifier.from_checkpoint(m, args.device)) for m in args.models if kinds[m] != "vae"]
        if not models:
            raise ValueError("evaluate needs at least one diffusion model beside --stage vae runs (it takes the grid "
                             "and the radar scaling from it)")
        grid = models[0][1].grid
        for path, d in models[1:]:
            grid.require_same(d.grid, path)
            if d.target_fov != models[0][1].target_fov:
                raise ValueError(f"{path} was trained on targets cropped to {d.target_fov}, {models[0][0]} to "
                                 f"{models[0][1].target_fov}: the ground truth can be cropped only one way; compare "
                                 f"models trained with the same --target_fov")
        autoencoders = [(m, load_codec(m, grid).autoencoder) for m in args.models if kinds[m] == "vae"]
        structure = load_structure(args.structure, grid) if args.structure else None
        taus = parse_taus(args.tau, max(grid.voxel_size))
        frames = load_frames(args.input, grid, models[0][1].radar_channels, args.data_format, args.count,
                             args.split, target_fov=models[0][1].target_fov)
        folder = OutputFolder(args.out, PROG, OUTPUTS, {"models": [os.path.abspath(m) for m in args.models]},
                              args.overwrite, protected=protected(list(args.models) + [args.structure], args.input))
    except (ValueError, TypeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    with folder:
        for line in folder.lines:
            print(line)
        try:
            if not all(f.has_target for f in tqdm(frames, desc="reading frames", unit="frame", leave=False,
                                                  disable=not args.progress)):
                raise ValueError(f"--input {args.input}: evaluation needs ground truth (radar/ + lidar/ pairs)")
            evaluate(args, samplers, models, autoencoders, structure, frames, taus)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; nothing was written to {args.out}", file=sys.stderr)
            return 130
        except ValueError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"{PROG}: error: cannot write to {args.out}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    return 0


def evaluate(args, samplers: Dict[str, SamplerSettings], models, autoencoders, structure, frames, taus) -> None:
    """Score every method on the frames and write the report."""
    start = time.perf_counter()
    table = Table(frames, models[0][1], taus)
    carrier = next((d for _, d in models if d.structure is not None), None)
    structure = structure or (carrier.structure if carrier else None)
    cover = baselines(table, models[0][1], structure, carrier.radius if carrier else (0, 0, 0))
    sweep, oracle_done = {}, not args.oracle
    for path, d in models:
        label = os.path.basename(os.path.normpath(path))
        if d.consistency:
            for name, s in (("onestep", samplers["onestep"]), (f"multistep-{args.multistep}", samplers["multistep"])):
                rows, _, best = model_rows(table, d, s, args)
                table.add(f"{label} {name}", rows)
                if best:
                    table.add(f"{label} {name} best of {args.samples}", best, "(needs the answer to choose)")
            continue
        heun, mean = samplers["heun"], samplers["onestep"]
        first = not sweep
        curves = {}
        heun_note = " ".join(f"{flag} {value:g}" for flag, value in (
            ("sigma_max", args.sigma_max), ("sigma_min", args.sigma_min), ("churn", args.s_churn)) if value)
        for name, settings, note in ((f"heun-{args.steps}", heun, f"({heun_note})" if heun_note else ""),
                                     ("onestep", mean, "(D(noise, sigma_max): the posterior mean)")):
            rows, swept, best = model_rows(table, d, settings, args, sweep=SWEEP if first else ())
            table.add(f"{label} {name}", rows, note)
            if best:
                table.add(f"{label} {name} best of {args.samples}", best, "(needs the answer to choose)")
            curves[name] = {"fscore": {t: v[f"fscore@{taus[0]:g}"]["mean"] for t, v in swept.items()},
                            "chamfer_sum_of_means": {t: v["chamfer_sum_of_means"]["mean"] for t, v in swept.items()}}
        if first:
            sweep = {"model": label, "curves": curves}
        if not oracle_done and d.codec is None:
            table.add(f"{label} heun-{args.steps} on the oracle support", model_rows(table, d, heun, args, True)[0],
                      "(upper bound: needs the answer)")
            oracle_done = True
    for path, autoencoder in autoencoders:
        table.add(f"{os.path.basename(os.path.normpath(path))} reconstruction", reconstruction_rows(table, autoencoder,
                                                                                                    args.batch_size),
                  "(the target through the autoencoder: an upper bound of its latent diffusion)")
    write_report(args, table, cover, sweep, time.perf_counter() - start)


def write_report(args, table: Table, cover: List[dict], sweep: dict, seconds: float) -> None:
    """evaluation.md, evaluation.json and the sweep plot."""
    text = (f"# Evaluation on {len(table.frames)} frames of {args.input}\n\nMeans over frames (medians in "
            f"parentheses); distances in metres, F-score at tau = {', '.join(f'{t:g}' for t in table.taus)} m. "
            f"Every cloud is compared at the grid's resolution: the target is the LiDAR voxelized on the grid "
            f"(voxel {table.grid.voxel_size} m). A model sampled on a support cannot recall the target voxels "
            f"outside it.\n\n| support | recall of the target voxels | voxels per frame | voxels per target voxel |"
            f"\n|---|---|---|---|\n" +
            "".join(f"| {r['support']} | {r['recall']:.3f} | {r['voxels_per_frame']:.0f} | {r['per_target_voxel']:.2f} "
                    f"|\n" for r in cover) + f"\n{table.markdown()}\n")
    if sweep:
        names = list(sweep["curves"])
        text += (f"\n## Occupancy threshold against F-score@{table.taus[0]:g} and Chamfer (sum of means), "
                 f"{sweep['model']}\n\n| threshold | " +
                 " | ".join(f"{n} fscore | {n} chamfer" for n in names) + " |\n|---" + "|---|---" * len(names) + "|\n")
        for t in SWEEP:
            cells = [f"{sweep['curves'][n]['fscore'][t]:.3f} | {sweep['curves'][n]['chamfer_sum_of_means'][t]:.3f}"
                     for n in names]
            text += f"| {t:g} | " + " | ".join(cells) + " |\n"
        plot_sweep(os.path.join(args.out, "threshold_sweep.png"), sweep, table.taus[0])
    with atomic(os.path.join(args.out, "evaluation.md")) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    write_json(os.path.join(args.out, "evaluation.json"), {
        "input": args.input, "frames": [f.name for f in table.frames], "taus": table.taus,
        "supports": cover, "seconds": seconds, "sweep": sweep,
        "methods": {k: {"note": v["note"], "summary": v["summary"], "distribution": v["distribution"]}
                    for k, v in table.methods.items()}})
    print(text)
    print(f"written: {os.path.join(args.out, 'evaluation.md')}, evaluation.json" +
          (", threshold_sweep.png" if sweep else ""))


def plot_sweep(path: str, sweep: dict, tau: float) -> None:
    """F-score at tau and Chamfer against the occupancy threshold (matplotlib: pip install 'sparse-radar[bench]')."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"{PROG}: matplotlib is not installed, so {path} is not drawn (pip install 'sparse-radar[bench]')",
              file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(6, 3.8))
    right = ax.twinx()
    for (name, curve), marker in zip(sweep["curves"].items(), "os^v"):
        t = list(curve["fscore"])
        ax.plot(t, [curve["fscore"][k] for k in t], marker=marker, color="tab:blue", label=f"{name} F-score")
        right.plot(t, [curve["chamfer_sum_of_means"][k] for k in t], marker=marker, color="tab:red",
                   linestyle="--", label=f"{name} Chamfer")
    ax.set_xlabel("occupancy threshold (channel 0 in [-1, 1])")
    ax.set_ylabel(f"mean F-score @ {tau:g} m", color="tab:blue")
    right.set_ylabel("mean Chamfer, sum of means (m)", color="tab:red")
    lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="center right")
    ax.set_title(sweep["model"])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run())

"""`python -m sparse_radar.sample RUN_OR_CHECKPOINT`: generate LiDAR-like clouds from radar, write them per frame
(.npy, .ply, .bin: x, y, z, intensity, doppler as float32; a PNG preview) and, where ground truth is known,
metrics.csv (one row per frame) and summary.json (means, medians, time per frame, peak memory)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List

from .data.datasets import DATA_FORMATS
from .frames import Frame, centres, load_frames, target_field
from .inference import DTYPES, SAMPLERS, Densifier, SamplerSettings, generate_batches
from .training.config import TRAIN_SUPPORTS
from .metrics import frame_metrics, parse_taus, summarize
from .outputs import claim_folder, peak_memory, write_cloud, write_csv, write_json
from .training.png import write_png
from .training.preview import COLORS, render_preview

PROG = "python -m sparse_radar.sample"
SUPPORTS = tuple(s for s in TRAIN_SUPPORTS if s != "oracle")
MODEL_TYPES = ("voxel", "ldm", "cd")


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser."""
    p = argparse.ArgumentParser(prog=PROG, allow_abbrev=False, description=__doc__.split(":", 1)[1].strip())
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="a run folder (its latest.pt) or a checkpoint")
    p.add_argument("--input", default="synthetic", help="'synthetic' (the test split), a data folder (pairs with "
                   "ground truth), a folder of radar point files, or one radar file")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="synthetic split (val: to choose --threshold without looking at the test frames)")
    p.add_argument("--data_format", default="points", choices=DATA_FORMATS, help="layout of --input files")
    p.add_argument("--count", type=int, default=None, help="frames to take (synthetic default 50; folders: all)")
    p.add_argument("--out", default=None, help="output folder (default RUN/samples/<sampler>_<steps>)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --out")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: heun (EDM), onestep (consistency)")
    p.add_argument("--steps", type=int, default=18, help="sampler steps (Heun: 2 network calls each but the last)")
    p.add_argument("--sigma_max", type=float, default=None, help="default: the checkpoint's (80)")
    p.add_argument("--sigma_min", type=float, default=None, help="default: the checkpoint's (0.002)")
    p.add_argument("--s_churn", type=float, default=0.0, help="Heun stochastic churn (EDM Algorithm 2)")
    p.add_argument("--threshold", type=float, default=0.0, help="a voxel is kept where occupancy (in [-1, 1]) > it")
    p.add_argument("--model_type", choices=MODEL_TYPES, default=None,
                   help="what the checkpoint must be: voxel (voxel-space diffusion), ldm or cd (latent diffusion, "
                   "decoded by its VAE); default: whatever it is")
    p.add_argument("--support", choices=SUPPORTS, default=None,
                   help="where to generate (default: the checkpoint's rule); predicted: by a structure network")
    p.add_argument("--structure", default=None, help="run or checkpoint of a --stage structure run, for --support "
                   "predicted (default: the one the checkpoint carries)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA weights")
    p.add_argument("--batch_size", type=int, default=4, help="frames per model call")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same output")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--tau", default=None, help="F-score distances in metres, comma-separated (default one voxel)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    return p


def model_type(densifier: Densifier) -> str:
    """voxel, ldm or cd."""
    if densifier.codec is None:
        return "voxel"
    return "cd" if densifier.consistency else "ldm"


def default_out(checkpoint: str, settings: SamplerSettings, support=None) -> str:
    """RUN/samples/<sampler>_<steps>[_<support>] beside the run folder of the checkpoint."""
    run = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
    return os.path.join(run, "samples", f"{settings.sampler}_{settings.steps}" + (f"_{support}" if support else ""))


def run(argv=None) -> int:
    """Sample as the flags say; returns the exit code (2: bad flags, checkpoint or input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
        densifier = Densifier.from_checkpoint(args.checkpoint, args.device, args.ema, args.dtype, args.support,
                                              args.structure)
        kind = model_type(densifier)
        if args.model_type and args.model_type != kind:
            raise ValueError(f"--model_type {args.model_type}: {args.checkpoint} is a {kind} model")
        settings = SamplerSettings(args.sampler or densifier.default_sampler, args.steps, args.sigma_max,
                                   args.sigma_min, args.s_churn, args.threshold)
        taus = parse_taus(args.tau, max(densifier.grid.voxel_size))
        frames = load_frames(args.input, densifier.grid, densifier.radar_channels, args.data_format, args.count,
                             args.split)
        out = args.out or default_out(args.checkpoint, settings, args.support)
        lines = claim_folder(out, args.overwrite, PROG)
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    rows = sample_frames(densifier, frames, settings, taus, out, args)
    if rows:
        write_csv(os.path.join(out, "metrics.csv"), rows)
    summary = {"checkpoint": os.path.abspath(args.checkpoint), "input": args.input, "frames": len(frames),
               "model_type": model_type(densifier), "support": densifier.support,
               "support_radius": list(densifier.radius),
               "frames_with_ground_truth": len(rows), "settings": vars(settings), "seed": args.seed,
               "taus": taus, "device": str(densifier.device), "dtype": args.dtype,
               **peak_memory(densifier.device), "metrics": summarize(rows)}
    write_json(os.path.join(out, "summary.json"), summary)
    print(f"{len(frames)} frame(s) written to {out}" + (f"; metrics.csv and summary.json over {len(rows)} frame(s) "
                                                        f"with ground truth" if rows else ""))
    for key in ("chamfer_sum_of_means", f"fscore@{taus[0]:g}", "voxel_iou", "seconds"):
        if key in summary["metrics"]:
            m = summary["metrics"][key]
            print(f"  {key}: mean {m['mean']:.4f}, median {m['median']:.4f}")
    return 0


def sample_frames(densifier: Densifier, frames: List[Frame], settings: SamplerSettings, taus: List[float],
                  out: str, args) -> List[dict]:
    """Generate every frame in batches, write its files; returns the metric rows of frames with ground truth."""
    names = ["x", "y", "z"] + [c.name for c in densifier.output_channels]
    shape, grid = densifier.grid.shape, densifier.grid
    rows = []
    for batch, radar, generated, seconds in generate_batches(densifier, frames, settings, args.seed,
                                                              args.batch_size, progress=args.progress):
        target = target_field(batch, shape) if all(f.has_target for f in batch) else None
        for b, frame in enumerate(batch):
            cloud = densifier.to_points(generated, b, settings.threshold)
            stem = os.path.join(out, frame.name)
            write_cloud(stem, cloud, names)
            kept = generated.prune(generated.feats[:, 0] > settings.threshold)
            kept = kept.replace(kept.feats.new_ones(kept.feats.shape))  # drawn where kept, whatever the threshold
            fields = [radar, kept] if target is None else [radar, target, kept]
            colors = [COLORS[0], COLORS[2]] if target is None else COLORS
            write_png(stem + ".png", render_preview(fields, b, colors))
            if target is not None:
                gt = centres(target, b, grid)
                row = {"frame": frame.name, "radar_voxels": int((radar.coords[:, 0] == b).sum()),
                       "generated_points": len(cloud), "target_voxels": len(gt), "seconds": seconds}
                row.update(frame_metrics(cloud[:, :3], gt, grid.voxel_index, taus, grid.diagonal))
                rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(run())

"""`python -m sparse_radar.sample RUN_OR_CHECKPOINT`: generate LiDAR-like clouds from radar, write them per frame
(.npy, .ply, .bin: x, y, z, intensity, doppler as float32; a PNG preview) and, where ground truth is known,
metrics.csv (one row per frame) and summary.json (means, medians, time per frame, peak memory)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List

from .data.datasets import DATA_FORMATS
from .data.coloradar import DEFAULT_MAX_DT
from .frames import Frame, centres, load_frames, target_field
from .inference import DTYPES, SAMPLERS, Densifier, SamplerSettings, generate_batches, whole_number
from .training.config import TRAIN_SUPPORTS
from .metrics import frame_metrics, parse_taus, summarize
from .cli_checks import check_flags, interruptible, protected
from .data.formats import DataFormatError
from .outputs import CLOUD_SUFFIXES, OutputFolder, atomic, peak_memory, write_cloud, write_csv, write_json
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
    p.add_argument("--calibration", default="auto", choices=("auto", "none"),
                   help="--data_format vod or coloradar: put the radar into the LiDAR frame with the official tree's "
                        "calib files (auto), or take the files' points as they are (none: a flat radar/, lidar/ "
                        "layout)")
    p.add_argument("--radar", default="arbe", choices=("arbe", "ars548"),
                   help="--data_format dual_radar: which of the dataset's two radars to read")
    p.add_argument("--max_dt", type=float, default=DEFAULT_MAX_DT,
                   help="--data_format coloradar: pair a radar scan with the nearest LiDAR scan only this close, in "
                        "seconds")
    p.add_argument("--count", type=int, default=None, help="frames to take (synthetic default 50; folders: all)")
    p.add_argument("--bag", default=None, help="a ROS1 .bag or ROS2 bag folder: densify its --radar_topic into a new "
                   "bag at --out (sensor_msgs/PointCloud2 or PointCloud in, PointCloud2 out)")
    p.add_argument("--radar_topic", default=None, help="--bag: the radar topic")
    p.add_argument("--out_topic", default=None, help="--bag: the output topic (default <radar_topic>/dense)")
    p.add_argument("--every", type=int, default=1, help="--bag: densify every k-th radar message")
    p.add_argument("--copy_topics", action="store_true", help="--bag: keep the input's other topics in the output")
    p.add_argument("--out", default=None, help="output folder (default RUN/samples/<sampler>_<steps>)")
    p.add_argument("--overwrite", action="store_true", help="start again in an --out that holds files: removes only "
                   "what sample wrote there (never a run or input folder)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted sample into --out: the frames already "
                   "complete are kept (a rerun with the same flags does this too)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None, help="default: heun (EDM), onestep (consistency)")
    p.add_argument("--steps", type=int, default=18, help="sampler steps (Heun: 2 network calls each but the last)")
    p.add_argument("--sigma_max", type=float, default=None, help="default: the checkpoint's (80)")
    p.add_argument("--sigma_min", type=float, default=None, help="default: the checkpoint's (0.002)")
    p.add_argument("--s_churn", type=float, default=0.0, help="Heun stochastic churn (EDM Algorithm 2)")
    p.add_argument("--threshold", type=float, default=0.0, help="a voxel is kept where occupancy (in [-1, 1]) > it")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = off; the model "
                   "must be trained with --cond_drop > 0)")
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
    """Sample as the flags say; returns the exit code (2: bad flags, checkpoint or input; 1: a write failed;
    130: interrupted)."""
    return interruptible(PROG, _run, argv)


def _run(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bag or args.radar_topic or args.out_topic or args.copy_topics or args.every != 1:
        return _run_bag(args)
    try:
        check_flags(args)
        settings = SamplerSettings(args.sampler or "heun", args.steps, args.sigma_max, args.sigma_min, args.s_churn,
                                   args.threshold, args.guidance)
        densifier = Densifier.from_checkpoint(args.checkpoint, args.device, args.ema, args.dtype, args.support,
                                              args.structure)
        kind = model_type(densifier)
        if args.model_type and args.model_type != kind:
            raise ValueError(f"--model_type {args.model_type}: {args.checkpoint} is a {kind} model")
        settings = SamplerSettings(args.sampler or densifier.default_sampler, args.steps, args.sigma_max,
                                   args.sigma_min, args.s_churn, args.threshold, args.guidance)
        settings.sigmas(densifier.diffusion)  # the range with the checkpoint's defaults filled in
        taus = parse_taus(args.tau, max(densifier.grid.voxel_size))
        frames = load_frames(args.input, densifier.grid, densifier.radar_channels, args.data_format, args.count,
                             args.split, args.calibration, args.max_dt, args.radar, densifier.target_fov)
        out = args.out or default_out(args.checkpoint, settings, args.support)
        folder = OutputFolder(out, PROG, output_names(frames), signature(args, densifier, settings, frames),
                              args.overwrite, args.resume, protected([args.checkpoint, args.structure], args.input))
    except (ValueError, TypeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    with folder:
        for line in folder.lines:
            print(line)
        try:
            records = sample_frames(densifier, frames, settings, taus, folder, args)
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted; {len(folder.done)} of {len(frames)} frame(s) are complete in {out} "
                  f"(run the same command again to finish the rest)", file=sys.stderr)
            return 130
        except DataFormatError as exc:
            print(f"{PROG}: error: {exc} ({len(folder.done)} finished frame(s) kept in {out}; fix or remove the file "
                  f"and run the same command again)", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"{PROG}: error: cannot write to {out}: {exc.strerror or exc} ({len(folder.done)} finished frame(s) "
                  f"kept; run the same command again to finish)", file=sys.stderr)
            return 1
        write_summary(folder, args, densifier, settings, taus, frames, records)
    return 0


def _run_bag(args) -> int:
    """sample --bag: densify a bag's radar topic into a new bag, then write <out>.summary.json."""
    from .bag_io import check_output, densify_bag
    ours = False  # whether a file at --out is this run's (a half-written one is removed on a failure)
    try:
        if not (args.bag and args.radar_topic and args.out):
            raise ValueError("--bag needs --radar_topic and --out (the output bag: a .bag file for a ROS1 bag, a "
                             "folder for a ROS2 one)")
        if not os.path.exists(args.bag):
            raise ValueError(f"--bag {args.bag!r} does not exist")
        whole_number(args.every, "--every", 1, 10**6)
        densifier = Densifier.from_checkpoint(args.checkpoint, args.device, args.ema, args.dtype, args.support,
                                              args.structure)
        settings = SamplerSettings(args.sampler or densifier.default_sampler, args.steps, args.sigma_max,
                                   args.sigma_min, args.s_churn, args.threshold, args.guidance)
        check_output(args.out, args.overwrite, [args.bag, args.checkpoint])
        ours = True
        summary = densify_bag(densifier, settings, args.bag, args.out, args.radar_topic, args.out_topic, args.every,
                              args.copy_topics, args.seed, args.progress)
    except KeyboardInterrupt:
        _remove(args.out if ours else None)
        print(f"{PROG}: interrupted; the partial bag {args.out} was removed", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as exc:
        _remove(args.out if ours else None)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    summary.update({"checkpoint": os.path.abspath(args.checkpoint), "settings": vars(settings), "seed": args.seed,
                    **peak_memory(densifier.device)})
    write_json(args.out.rstrip("/") + ".summary.json", summary)
    print(f"{summary['densified']} of {summary['radar_messages']} radar message(s) densified into {args.out} "
          f"({summary['out_topic']}); {summary['seconds_per_message']['median']:.3f} s per message (median); "
          f"summary in {args.out.rstrip('/')}.summary.json")
    return 0


def _remove(path) -> None:
    """Remove a half-written output bag of this run."""
    import shutil
    if path and os.path.exists(path):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def output_names(frames: List[Frame]) -> List[str]:
    """The file names sample writes into --out."""
    return ["metrics.csv", "summary.json"] + [f.name + s for f in frames for s in CLOUD_SUFFIXES]


def signature(args, densifier: Densifier, settings: SamplerSettings, frames: List[Frame]) -> dict:
    """What decides the output files: a folder written with another signature is not resumed."""
    return {"checkpoint": os.path.abspath(args.checkpoint), "weights": densifier.source, "ema": args.ema,
            "input": args.input if args.input == "synthetic" else os.path.abspath(args.input), "split": args.split,
            "data_format": args.data_format, "frames": [f.name for f in frames], "settings": vars(settings),
            "seed": args.seed, "batch_size": args.batch_size, "support": densifier.support,
            "support_radius": list(densifier.radius), "structure": args.structure, "dtype": args.dtype}


def write_summary(folder: OutputFolder, args, densifier: Densifier, settings: SamplerSettings, taus: List[float],
                  frames: List[Frame], records: List[dict]) -> None:
    """metrics.csv, summary.json and the closing lines (with the radar points that fell outside the grid)."""
    rows = [r["row"] for r in records if r.get("row")]
    if rows:
        write_csv(folder.path("metrics.csv"), rows)
    dropped = {r["name"]: r["dropped"] for r in records if r.get("dropped")}
    summary = {"checkpoint": os.path.abspath(args.checkpoint), "input": args.input, "frames": len(frames),
               "model_type": model_type(densifier), "support": densifier.support,
               "support_radius": list(densifier.radius),
               "frames_with_ground_truth": len(rows), "settings": vars(settings), "seed": args.seed,
               "taus": taus, "device": str(densifier.device), "dtype": args.dtype,
               "radar_points_outside_grid": {"total": sum(dropped.values()), "per_frame": dropped},
               **peak_memory(densifier.device), "metrics": summarize(rows)}
    write_json(folder.path("summary.json"), summary)
    if dropped:
        shown = ", ".join(f"{k}: {v}" for k, v in list(dropped.items())[:3]) + (" ..." if len(dropped) > 3 else "")
        print(f"warning: {sum(dropped.values())} radar point(s) outside the grid {densifier.grid.point_range} were "
              f"dropped in {len(dropped)} frame(s) ({shown}); summary.json lists them", file=sys.stderr)
    print(f"{len(frames)} frame(s) written to {folder.out}" + (f"; metrics.csv and summary.json over {len(rows)} "
                                                               f"frame(s) with ground truth" if rows else ""))
    for key in ("chamfer_sum_of_means", f"fscore@{taus[0]:g}", "voxel_iou", "seconds"):
        if key in summary["metrics"]:
            m = summary["metrics"][key]
            print(f"  {key}: mean {m['mean']:.4f}, median {m['median']:.4f}")


def sample_frames(densifier: Densifier, frames: List[Frame], settings: SamplerSettings, taus: List[float],
                  folder: OutputFolder, args) -> List[dict]:
    """Generate every frame not yet finished in the folder, in batches; each frame's files are written under
    temporary names and renamed, then the frame is journalled. Returns every frame's record, in order."""
    names = ["x", "y", "z"] + [c.name for c in densifier.output_channels]
    shape, grid = densifier.grid.shape, densifier.grid
    todo = [i for i, f in enumerate(frames) if f.name not in folder.done]
    batches = generate_batches(densifier, [frames[i] for i in todo], settings, args.seed, args.batch_size,
                               progress=args.progress, frame_ids=todo)
    for batch, radar, generated, seconds in batches:
        target = target_field(batch, shape) if all(f.has_target for f in batch) else None
        for b, frame in enumerate(batch):
            cloud = densifier.to_points(generated, b, settings.threshold)
            stem = folder.path(frame.name)
            write_cloud(stem, cloud, names)
            kept = generated.prune(generated.feats[:, 0] > settings.threshold)
            kept = kept.replace(kept.feats.new_ones(kept.feats.shape))  # drawn where kept, whatever the threshold
            fields = [radar, kept] if target is None else [radar, target, kept]
            colors = [COLORS[0], COLORS[2]] if target is None else COLORS
            with atomic(stem + ".png") as tmp:
                write_png(tmp, render_preview(fields, b, colors))
            row = None
            if target is not None:
                gt = centres(target, b, grid)
                row = {"frame": frame.name, "radar_voxels": int((radar.coords[:, 0] == b).sum()),
                       "generated_points": len(cloud), "target_voxels": len(gt), "seconds": seconds}
                row.update(frame_metrics(cloud[:, :3], gt, grid.voxel_index, taus, grid.diagonal))
            folder.finish_frame(frame.name, {"row": row, "dropped": frame.dropped})
            frame.release()
    return [{"name": f.name, **folder.done[f.name]} for f in frames]


if __name__ == "__main__":
    sys.exit(run())

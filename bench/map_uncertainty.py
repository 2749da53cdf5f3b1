"""Does the map's SDF std predict its error? On real RGB-D data against a reference surface, and on a synthetic
sequence against the exact scene and the same kind of reference.

    python bench/map_uncertainty.py [--dataset ../shared/data/7scenes_redkitchen_seq_0000_0399] [--frames 0:400]
                                    [--synthetic-frames 120] [--config my.yaml] [--out out/bench/map_uncertainty]

Real data: PRISM runs on the frames from the ground-truth start (the dataset's preset), and the reference is
Open3D's TSDF fused from the ground-truth poses of the same frames (prism_ros.evaluation.reference_map). For
the observed voxels within two voxels of the reference surface it prints the SDF error (mean, median, p95),
Spearman(std, |error|) and the share of voxels whose error lies inside their 95 % interval. The error includes
the map's drift from the world (PRISM fuses at its estimated poses) and the reference's own error; a second map
fused at the ground-truth poses shows the map's own error without the drift. The
synthetic sequence (`prism-ros synth`, Kinect-like noise) gives both scores, against the exact SDF and against
the reference, which shows how much the reference itself adds.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from prism_ros.datasets import open_dataset
from prism_ros.evaluation.reference_map import fuse_reference, signed_distance
from prism_ros.prism.config import FilterConfig, preset_config
from prism_ros.prism.filter import PrismFilter
from prism_ros.prism.observation import Observation
from prism_ros.prism.pipeline import score_map, track_sequence

DEFAULT_DATASET = Path(__file__).resolve().parents[2] / "shared" / "data" / "7scenes_redkitchen_seq_0000_0399"


def ate(estimates, truths) -> float:
    from prism_ros.evaluation.metrics import evaluate

    stamps = np.array([e.t for e in estimates])
    est = np.stack([e.T_world_camera for e in estimates])
    return evaluate((stamps, est), (stamps, np.stack(truths)), align="se3").ate_rmse


def map_at_truth(dataset, config: FilterConfig) -> PrismFilter:
    """A filter whose map fused every frame at its ground-truth pose (no tracking): the map's own error, without
    the drift of the poses it was fused at."""
    slam = PrismFilter(config, initial_pose=dataset[0].pose)
    for frame in dataset:
        level = config.map_level_for(frame.intrinsics.width, frame.intrinsics.height)
        obs = Observation.from_frame(frame, config.levels, slam.device, config.max_depth, first_level=level,
                                     backend=slam.backend)
        slam.map.integrate(obs.levels[level], obs.colour, torch.as_tensor(frame.pose), backend=slam.backend)
    return slam


def run(dataset, label: str, exact=None, config: Path | None = None) -> dict:
    settings = preset_config(dataset, config)
    slam, estimates, truths, _ = track_sequence(dataset, settings, init_gt=True)
    reference = fuse_reference(dataset)
    reference_sdf = lambda points: signed_distance(reference, points)
    first = (estimates[0].T_world_camera, truths[0])
    result = {"frames": len(dataset), "ate_rmse_m": ate(estimates, truths),
              "reference": score_map(slam.map, *first, reference_sdf)}
    if exact is not None:
        result["exact"] = score_map(slam.map, *first, exact)
    at_truth = map_at_truth(dataset, settings)
    result["reference, fused at the true poses"] = score_map(at_truth.map, truths[0], truths[0], reference_sdf)
    if exact is not None:
        result["exact, fused at the true poses"] = score_map(at_truth.map, truths[0], truths[0], exact)
    print(f"{label}: ATE {result['ate_rmse_m'] * 100:.2f} cm")
    for against, values in result.items():
        if isinstance(values, dict):
            print(f"{label} against the {against}: error mean {values['mean_abs_m'] * 1e3:.1f} mm, median "
                  f"{values['median_abs_m'] * 1e3:.1f} mm, p95 {values['p95_abs_m'] * 1e3:.1f} mm over "
                  f"{values['voxels']} voxels; Spearman(std, |error|) {values['std_error_spearman']:.2f}; "
                  f"{values['coverage_95']:.0%} inside their 95 % interval")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--frames", default="0:400", help="slice A:B")
    parser.add_argument("--synthetic-frames", type=int, default=120, help="0 skips the synthetic sequence")
    parser.add_argument("--config", type=Path, default=None, help="YAML overriding the presets (both sequences)")
    parser.add_argument("--out", type=Path, default=Path("out/bench/map_uncertainty"))
    args = parser.parse_args()
    results = {"real": run(open_dataset(args.dataset, frames=args.frames), f"{args.dataset.name} [{args.frames}]",
                           config=args.config)}
    if args.synthetic_frames:
        from prism_ros.synthetic import generate, read_scene

        with tempfile.TemporaryDirectory() as folder:
            path = generate(Path(folder) / "seq", frames=args.synthetic_frames, seed=0, motion="handheld", bag=None,
                            width=320, height=240, progress=False)
            results["synthetic"] = run(open_dataset(path), "synthetic handheld 320x240", read_scene(path).sdf,
                                       args.config)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "map_uncertainty.json").write_text(json.dumps(results, indent=2))
    print(f"-> {args.out / 'map_uncertainty.json'}")


if __name__ == "__main__":
    main()

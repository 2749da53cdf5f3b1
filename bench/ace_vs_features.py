"""ACE vs the classical feature baseline (SIFT/ORB + depth + PnP RANSAC) vs their hybrid, same tasks, same process.

Tasks (real data in ../shared/data):
- ``redkitchen``: map 7-Scenes redkitchen frames 0-299, relocalize frames 300-399;
- ``sun3d``: map SUN3D study room fragment 1, relocalize fragment 2 (about 2.5 m away, same world frame).
Both methods map with the ground-truth poses and depth of the mapping frames. ``hybrid`` is what ace_node
answers (:mod:`prism_ros.ace.hybrid`): ACE's pose if the query's depth confirms it against the map's surfaces
(:mod:`prism_ros.ace.verify`, which also refines it), otherwise the features' pose if it passes the same check;
its mapping time adds both maps and the map cloud, its ms/query what it ran. ``ace+check`` and
``features+check`` are each method alone behind the check. Every query is scored on all queries and on the
"overlapping" ones: those with a mapping frame within 30 cm and 20 deg (the same frame for both), where
relocalization is possible at all. A rejected query counts as a failure (infinite error); "wrong" counts
accepted poses more than 25 cm off. Timings are wall-clock in this process: mapping time includes reading
the mapping frames; ms/query covers the method's call on an image already in memory. The machine's load
average is recorded, since on a shared CPU it changes the timings.

    python bench/ace_vs_features.py [--methods ace,features,hybrid] [--tasks redkitchen,sun3d] [--quick]
                                    [--detector sift] [--keyframe-step 5] [--ace-recipe cpu]
                                    [--ace-set steps=N,batch=M] [--ace-encoder PATH] [--device cpu]
                                    [--out out/bench/ace_vs_features]

Prints a side-by-side table and writes ``run_<time>.json`` and ``latest.json`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from prism_ros.ace.features import FeatureConfig, build_feature_map
from prism_ros.ace.hybrid import ask
from prism_ros.ace.verify import VerifyConfig, build_map_cloud, frame_points
from prism_ros.datasets import open_dataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
METHODS = ("ace", "features", "hybrid")
WRONG_M = 0.25  # an accepted pose further off than this is "wrong"
TASKS = ("redkitchen", "sun3d")
OVERLAP_M, OVERLAP_DEG = 0.30, 20.0  # a query "overlaps" the map if a mapping frame is this close
THRESHOLDS = ((0.05, 5.0), (0.10, 10.0))


# ------------------------------------------------------------------------------------------- tasks
def task_datasets(task: str, data: Path, quick: bool):
    """(mapping dataset, query dataset, description) of a task; ``quick`` keeps every few frames only."""
    if task == "redkitchen":
        root = data / "7scenes_redkitchen_seq_0000_0399"
        mapping, query = ("0:300:6", "300:400:10") if quick else ("0:300", "300:400")
        return (open_dataset(root, frames=mapping), open_dataset(root, frames=query),
                f"7-Scenes redkitchen: map {mapping}, relocalize {query}")
    if task == "sun3d":
        root = data / "sun3d_studyroom_2fragments"
        frames = "0:50:2" if quick else None
        queries = "0:50:5" if quick else None
        return (open_dataset(root / "fragment-1-rgbd-frames", fmt="sun3d", frames=frames),
                open_dataset(root / "fragment-2-rgbd-frames", fmt="sun3d", frames=queries),
                "SUN3D study room: map fragment 1, relocalize fragment 2")
    raise SystemExit(f"unknown task {task!r} (use {', '.join(TASKS)})")


def dataset_poses(dataset) -> np.ndarray:
    """Ground-truth T_world_camera (N,4,4) of the frames of a (possibly sliced) dataset, without reading images."""
    stamps, poses = dataset.ground_truth()
    index = np.searchsorted(stamps, dataset.timestamps)
    if np.any(index >= len(stamps)) or not np.allclose(stamps[np.minimum(index, len(stamps) - 1)],
                                                       dataset.timestamps):
        raise SystemExit("ground truth does not cover the frames")
    return poses[index]


# ----------------------------------------------------------------------------------------- scoring
def pose_errors(estimate: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Translation (m) and rotation (deg) errors between pose stacks (..., 4, 4), broadcast."""
    dt = np.linalg.norm(estimate[..., :3, 3] - truth[..., :3, 3], axis=-1)
    R = np.swapaxes(truth[..., :3, :3], -1, -2) @ estimate[..., :3, :3]
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return dt, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def overlapping(queries: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """(Q,) bool: some mapping pose is within OVERLAP_M and OVERLAP_DEG of the query pose (the same one)."""
    dt, dr = pose_errors(queries[:, None], mapping[None])
    return np.any((dt < OVERLAP_M) & (dr < OVERLAP_DEG), axis=1)


def summarise(dt: np.ndarray, dr: np.ndarray) -> dict:
    """Median errors and fractions within the thresholds (rejected queries carry infinite errors)."""
    out = {"queries": int(len(dt))}
    if len(dt) == 0:
        return out
    out["median_translation_m"] = float(np.median(dt))
    out["median_rotation_deg"] = float(np.median(dr))
    for metres, degrees in THRESHOLDS:
        out[f"within_{round(metres * 100)}cm_{round(degrees)}deg"] = float(np.mean((dt < metres) & (dr < degrees)))
    return out


def score(results, truths: np.ndarray, overlap: np.ndarray, ms: list[float], mapping_s: float) -> dict:
    """Scores of one method on one task (results: objects with ``pose`` (None when rejected) and ``inliers``)."""
    dt, dr = np.full(len(results), np.inf), np.full(len(results), np.inf)
    for i, result in enumerate(results):
        if result.pose is not None:
            dt[i], dr[i] = pose_errors(result.pose, truths[i])
    accepted = np.array([r.pose is not None for r in results])
    return {"mapping_s": mapping_s, "ms_per_query_median": float(np.median(ms)),
            "ms_per_query_mean": float(np.mean(ms)), "accepted": float(np.mean(accepted)),
            "wrong": float(np.mean(accepted & (dt > WRONG_M))),
            "all": summarise(dt, dr), "overlapping": summarise(dt[overlap], dr[overlap]),
            "per_query": {"translation_m": [None if not np.isfinite(x) else float(x) for x in dt],
                          "rotation_deg": [None if not np.isfinite(x) else float(x) for x in dr],
                          "inliers": [int(r.inliers) for r in results], "overlapping": overlap.tolist()}}


# ----------------------------------------------------------------------------------------- methods
def timed_queries(localize, frames) -> tuple[list, list[float]]:
    """Run ``localize(rgb, intrinsics)`` on every frame (images in memory); (results, ms per query)."""
    results, ms = [], []
    for frame in frames:
        start = time.perf_counter()
        results.append(localize(frame.rgb, frame.intrinsics))
        ms.append(1e3 * (time.perf_counter() - start))
    return results, ms


def run_features(mapping, frames, args) -> tuple[list, list[float], float, dict]:
    config = FeatureConfig(detector=args.detector, keyframe_step=args.keyframe_step)
    start = time.perf_counter()
    feature_map = build_feature_map(mapping, config, progress=False)
    mapping_s = time.perf_counter() - start
    results, ms = timed_queries(feature_map.localize, frames)
    return results, ms, mapping_s, {"config": asdict(config)} | feature_map.meta


def run_ace(mapping, frames, args) -> tuple[list, list[float], float, dict]:
    from prism_ros.ace import get_recipe, load_encoder, map_scene
    from prism_ros.ace.relocalize import relocalize

    encoder = load_encoder(args.ace_encoder, device=args.device)
    overrides = {}
    for item in filter(None, args.ace_set.split(",")):
        key, _, value = item.partition("=")
        kind = type(getattr(get_recipe("cpu"), key))
        overrides[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    recipe = get_recipe(args.ace_recipe or ("test" if args.quick else "cpu"), **overrides)
    start = time.perf_counter()
    ace_map = map_scene(mapping, encoder, recipe=recipe, use_depth=True, device=args.device, progress=False,
                        feature_step=0)  # ACE alone: the hybrid's own maps are timed in run_checked
    mapping_s = time.perf_counter() - start
    results, ms = timed_queries(lambda rgb, intrinsics: relocalize(ace_map, encoder, rgb, intrinsics), frames)
    return results, ms, mapping_s, {"recipe": recipe.name, "encoder": encoder.encoder_id,
                                    "frames": ace_map.meta.get("frames")}


def run_checked(runs: dict, mapping, frames) -> dict:
    """The hybrid and each method behind the depth check, from the ACE and features runs' own results:
    name -> (results, ms, mapping_s, meta). The check's cost is timed here and added."""
    config = VerifyConfig()
    start = time.perf_counter()
    cloud = build_map_cloud(mapping, config)
    cloud_s = time.perf_counter() - start
    orders = {"hybrid": ("ace", "features"), "ace+check": ("ace",), "features+check": ("features",)}
    out = {}
    for name, order in orders.items():
        answers, ms = [], []
        for i, frame in enumerate(frames):
            start = time.perf_counter()
            points = frame_points(frame, config)
            answer = ask([(m, lambda m=m, i=i: runs[m][0][i]) for m in order], points, cloud, config)
            checked_ms = 1e3 * (time.perf_counter() - start)
            answers.append(answer)
            ms.append(checked_ms + sum(runs[m][1][i] for m in answer.results))  # the methods it asked
        sources = [a.source or "none" for a in answers]
        meta = {"order": list(order), "map_cloud_points": len(cloud), "map_cloud_s": cloud_s,
                "answered_by": {s: sources.count(s) for s in sorted(set(sources))}}
        out[name] = (answers, ms, sum(runs[m][2] for m in order) + cloud_s, meta)
    return out


RUNNERS = {"ace": run_ace, "features": run_features}


# ------------------------------------------------------------------------------------------ output
def fmt(value, scale: float = 1.0, digits: int = 1, percent: bool = False) -> str:
    if value is None:
        return "-"
    if percent:
        return f"{100 * value:.0f}%"
    return "inf" if not np.isfinite(value) else f"{value * scale:.{digits}f}"


def print_table(report: dict) -> None:
    header = (f"{'task':<11}{'method':<16}{'map s':>7}{'ms/q':>7}{'acc':>6}{'wrong':>6} | "
              f"{'all: n':>6}{'t cm':>7}{'r deg':>7}{'5/5':>6}{'10/10':>7} | "
              f"{'overlap: n':>10}{'t cm':>7}{'r deg':>7}{'5/5':>6}{'10/10':>7}")
    print(header)
    print("-" * len(header))
    for task, entry in report["tasks"].items():
        for method, res in entry["methods"].items():
            label = method
            if method == "features" and "meta" in res:
                label += "/" + res["meta"]["config"]["detector"]
            if "error" in res:
                print(f"{task:<11}{label:<16}  not run: {res['error']}")
                continue
            cells = []
            for subset in ("all", "overlapping"):
                s = res[subset]
                cells.append(f"{s['queries']:>{6 if subset == 'all' else 10}}"
                             f"{fmt(s.get('median_translation_m'), 100):>7}{fmt(s.get('median_rotation_deg'), 1, 2):>7}"
                             f"{fmt(s.get('within_5cm_5deg'), percent=True):>6}"
                             f"{fmt(s.get('within_10cm_10deg'), percent=True):>7}")
            print(f"{task:<11}{label:<16}{res['mapping_s']:>7.1f}{res['ms_per_query_median']:>7.0f}"
                  f"{fmt(res['accepted'], percent=True):>6}{fmt(res['wrong'], percent=True):>6} | {cells[0]} | "
                  f"{cells[1]}")
    print("map s: mapping wall time; ms/q: median per query; acc: accepted; wrong: accepted but more than "
          f"{WRONG_M * 100:.0f} cm off; t/r: median errors (rejected = inf); "
          f"5/5, 10/10: within 5 cm/5 deg, 10 cm/10 deg; overlap: a mapping frame within {OVERLAP_M * 100:.0f} cm "
          f"and {OVERLAP_DEG:.0f} deg")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="ace,features,hybrid",
                        help="comma list of " + ",".join(METHODS) + " (hybrid runs both others)")
    parser.add_argument("--tasks", default="redkitchen,sun3d", help="comma list of " + ",".join(TASKS))
    parser.add_argument("--quick", action="store_true", help="every few frames only (smoke run)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--detector", default="sift", choices=["sift", "orb"])
    parser.add_argument("--keyframe-step", type=int, default=FeatureConfig.keyframe_step)
    parser.add_argument("--ace-recipe", default=None, help="ACE recipe (default cpu; test with --quick)")
    parser.add_argument("--ace-set", default="", help="recipe fields to replace, e.g. steps=1000,batch=2048")
    parser.add_argument("--ace-encoder", default=None, help="encoder weights (default: shipped)")
    parser.add_argument("--device", default="cpu", help="torch device for ACE")
    parser.add_argument("--out", type=Path, default=Path("out/bench/ace_vs_features"))
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown} (use {', '.join(METHODS)})")
    if args.quick and args.keyframe_step == FeatureConfig.keyframe_step:
        args.keyframe_step = 1  # the quick mapping set is already subsampled

    report = {"command": "python bench/ace_vs_features.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "quick": args.quick, "load_average_start": list(os.getloadavg()), "cpu_count": os.cpu_count(),
              "tasks": {}}
    for task in tasks:
        mapping, query, description = task_datasets(task, args.data, args.quick)
        truths, mapping_poses = dataset_poses(query), dataset_poses(mapping)
        overlap = overlapping(truths, mapping_poses)
        print(f"{task}: {description} ({len(mapping)} mapping, {len(query)} query frames, "
              f"{int(overlap.sum())} overlapping)", flush=True)
        frames = list(query)
        entry = report["tasks"][task] = {"description": description, "mapping_frames": len(mapping),
                                         "query_frames": len(query), "overlapping": int(overlap.sum()), "methods": {}}
        runs = {}
        for method in RUNNERS:
            if method not in methods and "hybrid" not in methods:
                continue
            try:
                runs[method] = RUNNERS[method](mapping, frames, args)
            except Exception as error:
                entry["methods"][method] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
                print(f"  {method}: not run ({entry['methods'][method]['error']})", flush=True)
        if "hybrid" in methods and len(runs) == len(RUNNERS):
            runs.update(run_checked(runs, mapping, frames))
        for method, (results, ms, mapping_s, meta) in runs.items():
            entry["methods"][method] = score(results, truths, overlap, ms, mapping_s) | {"meta": meta}
            s = entry["methods"][method]
            print(f"  {method}: mapping {mapping_s:.1f} s, {s['ms_per_query_median']:.0f} ms/query, "
                  f"{100 * s['all'].get('within_5cm_5deg', 0):.0f}% within 5 cm/5 deg", flush=True)
    report["load_average_end"] = list(os.getloadavg())
    print()
    print_table(report)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"run_{time.strftime('%Y%m%d_%H%M%S')}{'_quick' if args.quick else ''}.json"
    text = json.dumps(report, indent=1)
    path.write_text(text)
    (args.out / "latest.json").write_text(text)
    print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    main()

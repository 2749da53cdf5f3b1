"""DMN episodes, training, evaluation, weight files and the `prism-ros dmn` commands, at tiny sizes."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from bad_files import FILE_CASES, bad_file, edited
from typer.testing import CliRunner

from prism_ros.dmn.environments import generate, split_seeds
from prism_ros.dmn.localizer import Area, load_contexts, save_contexts
from prism_ros.dmn.model import DmnConfig, build_method
from prism_ros.dmn.particles import compose, pose_squared_error
from prism_ros.dmn.training import (
    SUCCESS_MSE,
    StoredEpisodes,
    StreamedEpisodes,
    TrainConfig,
    TrainResult,
    evaluate,
    load_method,
    near_poses,
    quarter_turns,
    save_method,
    train,
)
from prism_ros.errors import InputError


def test_odometry_chains_the_query_poses():
    episode = StreamedEpisodes("rooms", "val").sample(6, contexts=4, steps=5)
    assert episode.context_images.shape == (6, 4, 3, 32, 32) and episode.query_images.shape == (6, 5, 3, 32, 32)
    assert 0.0 <= float(episode.query_images.min()) and float(episode.query_images.max()) <= 1.0
    assert torch.equal(episode.odometry[:, 0], torch.zeros(6, 3))
    pose = episode.query_poses[:, 0]
    for t in range(1, 5):
        pose = compose(pose, episode.odometry[:, t])
        assert torch.allclose(pose, episode.query_poses[:, t], atol=1e-5)


def test_streamed_episodes_are_reproducible_and_splits_differ():
    a = StreamedEpisodes("rooms", "train").sample(3, 4, 1)
    b = StreamedEpisodes("rooms", "train").sample(3, 4, 1)
    c = StreamedEpisodes("rooms", "test").sample(3, 4, 1)
    assert torch.equal(a.query_images, b.query_images) and not torch.equal(a.query_images, c.query_images)


def test_stored_episodes_use_distinct_views_of_one_environment(tmp_path):
    data = generate("rooms", split_seeds("train", 3), views=10)
    episode = StoredEpisodes(data, seed=1).sample(5, contexts=4, steps=5)
    views = torch.cat((episode.context_poses, episode.query_poses), dim=1)  # (5, 9, 3)
    for poses in views:
        matches = (poses[:, None] == data["poses"].reshape(1, -1, 3)).all(-1)  # which stored view each is
        index = matches.float().argmax(-1)
        assert matches.any(-1).all() and len(set(index.tolist())) == 9 and len(set((index // 10).tolist())) == 1
    with pytest.raises(InputError, match="views"):
        StoredEpisodes(data).sample(2, contexts=8, steps=5)


def test_training_moves_weights_and_files_round_trip(tmp_path):
    config = DmnConfig()
    result = train("regr-dmn", "rooms", TrainConfig(steps=6, batch=4, validate_every=3, validation_episodes=8),
                   config, progress=False)
    assert result.steps == 6 and len(result.history) == 2
    untrained = build_method("regr-dmn", config)
    changed = [not torch.equal(a, b) for a, b in zip(result.method.state_dict().values(),
                                                      untrained.state_dict().values())]
    assert any(changed)
    path = save_method(result, "regr-dmn", "rooms", config, TrainConfig(), tmp_path / "w.pt", "test")
    loaded, record = load_method(path)
    assert record["method"] == "regr-dmn" and record["steps"] == 6
    for a, b in zip(loaded.state_dict().values(), result.method.state_dict().values()):
        assert torch.allclose(a, b.half().float())
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(InputError, match="DMN weights"):
        load_method(tmp_path / "bad.pt")
    torch.save({"kind": "other"}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a DMN weights file"):
        load_method(tmp_path / "other.pt")


def test_quarter_turns_rotate_about_the_room_centre():
    pose = torch.tensor([[0.5, 0.25, 0.0]])
    expected = torch.tensor([[[-0.25, 0.5, 0.5], [-0.5, -0.25, -1.0], [0.25, -0.5, -0.5]]])
    assert torch.allclose(quarter_turns(pose), expected, atol=1e-6)


def test_near_poses_lie_outside_the_success_radius_inside_the_room():
    truth = torch.tensor([[0.0, 0.0, 0.0], [-0.95, 0.9, 0.95], [0.5, -0.99, -0.5]])
    near = near_poses(truth, 10, torch.Generator().manual_seed(3))
    assert near.shape == (3, 10, 3) and bool((near.abs() <= 1.0).all())
    error = pose_squared_error(near, truth[:, None].expand_as(near))
    assert bool((error > 0.2).all())  # never a pose the success metric (x-y or with heading) would accept
    moved = (near[:, :5, :2] - truth[:, None, :2]).norm(dim=-1)
    assert bool(((moved > 0.44) & (moved < 1.01)).all())
    assert torch.equal(near[:, 5:, :2], truth[:, None, :2].expand(3, 5, 2))  # the rest turn in place


def test_pose_squared_error_adds_half_the_squared_yaw_error_in_radians_across_the_seam():
    truth = torch.tensor([[0.0, 0.0, 0.9]])
    estimate = torch.tensor([[0.1, -0.2, -0.9]])  # 0.2 pi away across +-pi
    expected = 0.01 + 0.04 + 0.5 * (0.2 * math.pi) ** 2
    assert float(pose_squared_error(estimate, truth)[0]) == pytest.approx(expected, rel=1e-5)


def test_a_short_ranking_run_breaks_the_rooms_symmetry_better_than_chance():
    """400 steps of the ranking term alone: on 128 held-out episodes the truth outscores its three quarter turns
    far more often than chance (25 %; 3 binomial sigmas above it is 36 %), and most uniform poses."""
    config = TrainConfig(steps=400, batch=32, pose_weight=0.0, discrimination_weight=0.0, ranking_weight=1.0,
                         patience=0, validate_every=400, validation_episodes=128, validation_particles=64)
    result = train("pf-dmn", "rooms", config, DmnConfig(), progress=False)
    step, _, _, rotation_accuracy, beats_uniform = result.history[-1]
    assert step == 400 and rotation_accuracy > 0.36 and beats_uniform > 0.7, result.history


def test_training_with_no_term_is_refused():
    with pytest.raises(InputError, match="nothing to train"):
        train("regr-dmn", "rooms", TrainConfig(steps=1, pose_weight=0.0, ranking_weight=1.0), DmnConfig(),
              progress=False)


def test_evaluation_scores_the_oracle_and_the_uninformed_estimate():
    """Closest context (an oracle of the true pose) succeeds far more often than the uninformed estimate, and
    the tracking error is that of the perturbed initial belief: the scoring is not constant."""
    oracle = evaluate(build_method("closest-context"), "rooms", "one_step", episodes=40, batch=20)
    blind = evaluate(build_method("uninformed"), "rooms", "one_step", episodes=40, batch=20)
    tracking = evaluate(build_method("uninformed"), "rooms", "tracking", episodes=20, batch=20)
    assert oracle["episodes"] == blind["episodes"] == 40
    assert oracle["success_rate"] > blind["success_rate"] + 0.2, (oracle, blind)
    # tracking starts from a belief whose centre is off by the tracking std (0.3 per axis, 30 deg), so the blind
    # estimate misses by at least 2 * 0.09 and drifts further with the odometry (its heading is off)
    assert tracking["mse_xy"] > 0.15 and SUCCESS_MSE < blind["mse_xy"], (tracking, blind)


def test_cli_generate_train_eval_table(tmp_path):
    from prism_ros.cli.dmn import app

    runner = CliRunner()
    data = tmp_path / "rooms.pt"
    result = runner.invoke(app, ["generate", "--domain", "rooms", "--environments", "4", "--out", str(data)])
    assert result.exit_code == 0 and "4 environments, 40 views" in result.output, result.output
    result = runner.invoke(app, ["train", "--domain", "rooms", "--method", "pf-vector", "--steps", "2", "--batch", "2",
                                 "--minutes", "0", "--data", str(data), "--out", str(tmp_path / "w"), "--threads", "1"])
    assert result.exit_code == 0 and "pf-vector (rooms): 2 steps" in result.output, result.output
    # a second stage starts from the first's weights and counts its steps into the total; other methods' are refused
    first = tmp_path / "w" / "rooms" / "pf-vector.pt"
    result = runner.invoke(app, ["train", "--domain", "rooms", "--method", "pf-vector", "--steps", "3", "--batch", "2",
                                 "--minutes", "0", "--data", str(data), "--out", str(tmp_path / "w2"), "--threads", "1",
                                 "--init", str(first), "--ranking-weight", "1"])
    assert result.exit_code == 0, result.output
    staged = torch.load(tmp_path / "w2" / "rooms" / "pf-vector.pt", weights_only=False)
    assert staged["total_steps"] == 5 and staged["init_command"].startswith("prism-ros")
    result = runner.invoke(app, ["train", "--domain", "rooms", "--method", "pf-dmn", "--init", str(first),
                                 "--out", str(tmp_path / "w3")])
    assert result.exit_code == 2 and "--init holds pf-vector weights" in result.output, result.output
    result = runner.invoke(app, ["table", "--domain", "rooms", "--episodes", "4", "--weights", str(tmp_path / "w"),
                                 "--out", str(tmp_path / "table.json"), "--threads", "1"])
    assert result.exit_code == 0, result.output
    rows = {row["method"]: row for row in json.loads((tmp_path / "table.json").read_text())["rows"]}
    assert rows["pf-vector"]["trained"] and "sequential" in rows["pf-vector"] and "not trained" in result.output
    assert rows["closest-context"]["one_step"]["episodes"] == 4
    assert rows["pf-dmn"]["paper"] == {"sequential": 95.6, "one_step": 93.5} and "+yaw" in result.output
    for setting in ("sequential", "one_step"):  # the yaw-inclusive success asks for more than the x-y one
        assert rows["closest-context"][setting]["success_rate_pose"] <= rows["closest-context"][setting]["success_rate"]
    result = runner.invoke(app, ["plot", "--domain", "rooms", "--method", "pf-vector", "--weights", str(tmp_path / "w"),
                                 "--out", str(tmp_path / "rooms.png"), "--threads", "1"])
    assert result.exit_code == 0 and (tmp_path / "rooms.png").stat().st_size > 10000, result.output
    result = runner.invoke(app, ["eval", "--domain", "rooms", "--method", "pf-dmn", "--weights", str(tmp_path / "w")])
    assert result.exit_code == 2 and "no weights for pf-dmn" in result.output
    result = runner.invoke(app, ["generate", "--domain", "attic", "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 2 and "attic" in result.output
    # a data set of another domain or image size is refused before training, naming the fix
    result = runner.invoke(app, ["train", "--domain", "mazes", "--data", str(data), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2 and "holds rooms environments" in result.output and "--domain rooms" in result.output
    small = tmp_path / "rooms16.pt"
    assert runner.invoke(app, ["generate", "--domain", "rooms", "--environments", "2", "--image-size", "16",
                               "--out", str(small)]).exit_code == 0
    result = runner.invoke(app, ["train", "--domain", "rooms", "--data", str(small), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "--image-size 32" in result.output, result.output
    if not torch.cuda.is_available():  # --device cuda without CUDA: one line naming the fix
        result = runner.invoke(app, ["train", "--domain", "rooms", "--device", "cuda", "--out", str(tmp_path / "c")])
        assert result.exit_code == 2 and "CUDA is not available" in result.output, result.output


# ------------------------------------------------------------------------------- bad weights and context files
SMALL = DmnConfig(image_size=16, encoder_channels=(4, 4), feature_channels=4, key_channels=4, key_size=4,
                  value_channels=4, head_channels=4, head_hidden=8, vector_map_size=4)


def _weights_file(folder, method="pf-dmn"):
    result = TrainResult(build_method(method, SMALL), steps=1)
    return save_method(result, method, "rooms", SMALL, TrainConfig(), folder / "weights.pt", "test")


def _config(**changes):
    return lambda blob: blob["dmn_config"].update(changes)


def _weight(change):
    def edit(blob):
        key = next(k for k in blob["state"] if k.endswith("first.conv.bias"))
        blob["state"][key] = change(blob["state"][key])
    return edit


WEIGHTS_CASES = [  # (name, edit of a valid weights file's dict, pattern of the InputError)
    ("other kind: ACE map", lambda blob: blob.update(kind=None, format="prism_ros.ace.map"),
     r"not a DMN weights file \(it is an ACE map"),
    ("other kind: context file", lambda blob: blob.update(kind="prism_ros.dmn.contexts"),
     r"not a DMN weights file \(it is a DMN context file"),
    ("no method", lambda blob: blob.pop("method"), "unknown method None"),
    ("unknown method", lambda blob: blob.update(method="pf-magic"), "unknown method 'pf-magic'"),
    ("unknown domain", lambda blob: blob.update(domain="attic"), "unknown domain 'attic'"),
    ("no config", lambda blob: blob.pop("dmn_config"), r"dmn_config differs from DmnConfig \(NoneType\)"),
    ("config key unknown", _config(dropout=0.5), r"dmn_config differs from DmnConfig \(\['dropout'\]\)"),
    ("config key missing", lambda blob: blob["dmn_config"].pop("key_size"), r"\(\['key_size'\]\)"),
    ("image size huge", _config(image_size=10**6), r"image_size must be an integer in \[4, 1024\]"),
    ("channels negative", _config(feature_channels=-4), r"feature_channels must be an integer in \[1, 4096\]"),
    ("channels fractional", _config(encoder_channels=(4, 4.5)), r"encoder_channels\[1\] must be an integer"),
    ("channels not a pair", _config(encoder_channels=(4,)), "encoder_channels must have 2 values"),
    ("particles astronomical", _config(particles_global_eval=10**12), r"particles_global_eval must be an integer in"),
    ("noise NaN", _config(transition_noise=(0.02, float("nan"), 0.02)), r"transition_noise\[1\] must be a finite"),
    ("alpha above one", _config(resample_alpha=3.0), r"resample_alpha must be a finite number in \[0, 1\]"),
    ("no weights", lambda blob: blob.pop("state"), "the weights of pf-dmn must be a dict of named tensors"),
    ("weights of another method", lambda blob: blob.update(method="pf-vector"),
     "the weights of pf-vector do not fit the configuration"),
    ("weights of another size", _config(feature_channels=8), "must be a 8.* float tensor, got .4,"),
    ("weight integer", _weight(lambda v: v.to(torch.int32)),
     r"first.conv.bias must be a 4 float tensor, got \(4,\) int32"),
    ("weight NaN", _weight(lambda v: torch.full_like(v, float("nan"))), "first.conv.bias has non-finite values"),
    ("weight inf", _weight(lambda v: torch.full_like(v, float("inf"))), "first.conv.bias has non-finite values"),
]


@pytest.mark.parametrize("case", FILE_CASES)
def test_weights_file_refuses_damaged_files(tmp_path, case):
    good = _weights_file(tmp_path)
    with pytest.raises(InputError, match=FILE_CASES[case][1]) as error:
        load_method(bad_file(case, good, tmp_path))
    assert "prism-ros dmn train" in error.value.fix and error.value.path is not None


@pytest.mark.parametrize("name,edit,pattern", WEIGHTS_CASES, ids=[case[0] for case in WEIGHTS_CASES])
def test_weights_file_refuses_bad_content(tmp_path, name, edit, pattern):
    good = _weights_file(tmp_path)
    method, record = load_method(good)  # the good file round trips
    assert method.config == SMALL and record["method"] == "pf-dmn"
    bad = edited(good, tmp_path, edit)
    with pytest.raises(InputError, match=pattern) as error:
        load_method(bad)
    assert error.value.path == bad and "prism-ros dmn train" in error.value.fix


def _contexts_file(folder):
    images = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    poses = [[1.0, 2.0, 0.5], [1.5, 2.5, -1.0], [3.0, 0.5, 3.0]]
    return save_contexts(folder / "contexts.pt", images.numpy(), poses, Area(-1.0, -2.0, 10.0))


CONTEXT_CASES = [  # (name, edit of a valid context file's dict, pattern of the InputError)
    ("other kind: DMN weights", lambda blob: blob.update(kind="prism_ros.dmn"),
     r"not a DMN context file \(it is DMN weights"),
    ("no images", lambda blob: blob.pop("images"), "context images must be a NxNxNx3 uint8 tensor, got NoneType"),
    ("images float", lambda blob: blob.update(images=blob["images"].float()), r"got \(3, 8, 8, 3\) float32"),
    ("images grey", lambda blob: blob.update(images=blob["images"][..., 0]), r"got \(3, 8, 8\) uint8"),
    ("no images in it", lambda blob: blob.update(images=blob["images"][:0], poses=blob["poses"][:0]),
     r"holds no image \(images of shape \(0, 8, 8, 3\)\)"),
    ("poses a list", lambda blob: blob.update(poses=blob["poses"].tolist()), "context poses must be a 3x3 float"),
    ("poses of fewer images", lambda blob: blob.update(poses=blob["poses"][:2]), r"got \(2, 3\) float64"),
    ("poses NaN", lambda blob: blob["poses"].__setitem__((1, 2), float("nan")), "context poses has non-finite"),
    ("poses inf", lambda blob: blob["poses"].__setitem__((0, 0), float("inf")), "context poses has non-finite"),
    ("poses 1e9 m", lambda blob: blob["poses"].__setitem__((0, 0), 1e9), "context poses has values beyond"),
    ("area of two numbers", lambda blob: blob.update(area=[0.0, 1.0]), r"area must be \[x0, y0, side\]"),
    ("area side zero", lambda blob: blob.update(area=[0.0, 1.0, 0.0]), "area side must be a finite number"),
    ("area side negative", lambda blob: blob.update(area=[0.0, 1.0, -5.0]), "area side must be a finite number"),
    ("area NaN", lambda blob: blob.update(area=[float("nan"), 1.0, 5.0]), "area x0 must be a finite number"),
    ("area a string", lambda blob: blob.update(area=[0.0, "1", 5.0]), "area y0 must be a finite number"),
]


@pytest.mark.parametrize("case", FILE_CASES)
def test_context_file_refuses_damaged_files(tmp_path, case):
    good = _contexts_file(tmp_path)
    with pytest.raises(InputError, match=FILE_CASES[case][1]) as error:
        load_contexts(bad_file(case, good, tmp_path))
    assert "save_contexts" in error.value.fix and error.value.path is not None


@pytest.mark.parametrize("name,edit,pattern", CONTEXT_CASES, ids=[case[0] for case in CONTEXT_CASES])
def test_context_file_refuses_bad_content(tmp_path, name, edit, pattern):
    good = _contexts_file(tmp_path)
    images, poses, area = load_contexts(good)  # the good file round trips
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8 and area == Area(-1.0, -2.0, 10.0)
    assert np.array_equal(poses, [[1.0, 2.0, 0.5], [1.5, 2.5, -1.0], [3.0, 0.5, 3.0]])
    bad = edited(good, tmp_path, edit)
    with pytest.raises(InputError, match=pattern) as error:
        load_contexts(bad)
    assert error.value.path == bad and "save_contexts" in error.value.fix


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_and_evaluation_run_on_cuda():
    """A few steps on the GPU (episodes rendered on the CPU, moved there); the evaluation too."""
    from prism_ros.dmn.training import TrainConfig, evaluate, train

    config = TrainConfig(steps=3, batch=4, validate_every=3, validation_episodes=8, validation_particles=32)
    result = train("pf-dmn", "rooms", config, progress=False, device="cuda")
    assert result.steps == 3 and next(result.method.parameters()).is_cuda
    scores = evaluate(result.method, "rooms", "one_step", episodes=4, batch=4, device="cuda")
    assert scores["episodes"] == 4 and 0.0 <= scores["success_rate"] <= 1.0

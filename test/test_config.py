"""FilterConfig: YAML presets, overrides, and unknown keys named in the error."""
from __future__ import annotations

import pytest

from prism_ros.errors import InputError
from prism_ros.prism.config import FilterConfig, preset_config
from prism_ros.resources import config_file


def test_defaults_round_trip_through_a_dict():
    config = FilterConfig()
    assert FilterConfig.from_dict(config.to_dict()) == config


def test_later_files_override_earlier_ones(tmp_path):
    base, user = tmp_path / "base.yaml", tmp_path / "user.yaml"
    base.write_text("max_depth: 4.0\ntracking:\n  photometric_weight: 0.0\n  icp_weight: 2.0\n")
    user.write_text("tracking:\n  photometric_weight: 0.5\nmap:\n  voxel_size: 0.04\n")
    config = FilterConfig.from_yaml(base, user)
    assert config.max_depth == 4.0 and config.map.voxel_size == 0.04
    assert config.tracking.photometric_weight == 0.5 and config.tracking.icp_weight == 2.0


def test_unknown_keys_are_named_with_their_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tracking:\n  photometric_wieght: 0.0\n")
    with pytest.raises(InputError, match=r"tracking\.photometric_wieght") as error:
        FilterConfig.from_yaml(bad)
    assert "bad.yaml" in str(error.value) and "photometric_weight" in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        FilterConfig.from_yaml(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("tracking: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        FilterConfig.from_yaml(broken)


@pytest.mark.parametrize("name", ["prism_7scenes.yaml", "prism_tum.yaml", "prism_sun3d.yaml"])
def test_shipped_presets_load(name):
    FilterConfig.from_yaml(config_file(name))


def test_preset_for_a_dataset_format():
    class Fake:
        format_name = "7scenes"
        T_imu_camera = None

    assert preset_config(Fake()).tracking.photometric_weight == 0.0


def test_cuda_requested_without_cuda_is_an_input_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(InputError, match="CUDA is not available"):
        FilterConfig(device="cuda").resolved_device()


@pytest.mark.parametrize("size, level", [((320, 240), 0), ((640, 480), 1), ((752, 480), 1), ((1280, 720), 2),
                                         ((4000, 3000), 2)])
def test_map_level_auto_is_the_finest_level_of_at_most_100k_pixels(size, level):
    assert FilterConfig(map_level="auto").map_level_for(*size) == level  # 3 levels: 2 is the coarsest
    assert FilterConfig(map_level=1).map_level_for(*size) == 1


@pytest.mark.parametrize("value", ["half", 1.5, 3, -1])
def test_a_bad_map_level_names_the_choices(value):
    with pytest.raises(InputError, match="map_level"):
        FilterConfig(map_level=value)

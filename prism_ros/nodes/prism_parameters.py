"""prism_node's parameters: one table (:data:`PARAMETERS`) drives their declaration, their checks at start-up
and at runtime, config/prism.yaml and the table in docs/node.md; and the filter and stereo configurations
built from their values."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from prism_ros.errors import InputError
from prism_ros.frame import Intrinsics
from prism_ros.nodes import prediction_publishing
from prism_ros.nodes.parameters import (
    Param,
    check_intrinsics_source,
    convert_value,
    count,
    fraction,
    intrinsics_check,
    non_negative,
    not_empty,
    one_of,
    parameters_file,
    positive,
    transform,
)
from prism_ros.prism.config import FilterConfig
from prism_ros.prism.kernels import BACKENDS
from prism_ros.prism.stereo import StereoConfig, StereoRectifier

IDENTITY16 = [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
QOS_NAMES = ("sensor_data", "reliable", "system_default")
TRANSITION_MODELS = ("constant_velocity", "imu", "control")
RGB_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "8UC1", "8UC3", "8UC4")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1", "64FC1")
GREY_ENCODINGS = ("mono8", "8UC1")
DEPTH_SOURCES = ("depth", "stereo")


def _num_disparities(value):
    return None if value > 0 and value % 16 == 0 else "must be a positive multiple of 16"


def _block_size(value):
    return None if value >= 1 and value % 2 == 1 else "must be odd and >= 1"


def _stereo_max_depth(value):
    if not (math.isfinite(value) and value > StereoConfig.min_depth):
        return f"must be a number > {StereoConfig.min_depth} (the nearest stereo depth kept, m)"
    return None


PARAMETERS: dict[str, Param] = {
    # -- inputs
    "rgb_topic": Param("rgb/image", "str", "colour image (sensor_msgs/Image: rgb8, bgr8, rgba8, "
                       "bgra8, mono8); with stereo depth the left image", check=not_empty),
    "rgb_compressed": Param(False, "bool", "colour topic carries sensor_msgs/CompressedImage (jpeg/png)"),
    "depth_topic": Param("depth/image", "str", "depth image registered to the colour camera "
                         "(16UC1/mono16 scaled by depth_scale, or 32FC1 metres); unused with stereo depth",
                         check=not_empty),
    "camera_info_topic": Param("rgb/camera_info", "str", "CameraInfo of the colour camera (synchronised "
                               "with the images when intrinsics_source is camera_info)"),
    "imu_topic": Param("", "str", "sensor_msgs/Imu in the body frame; empty = no IMU"),
    "control_topic": Param("", "str", "commands for the control transition model; empty = none"),
    "control_type": Param("accel", "str", "accel: geometry_msgs/AccelStamped (linear = commanded body "
                          "acceleration, angular = commanded body rates); twist: geometry_msgs/TwistStamped "
                          "(acceleration from consecutive linear velocities, rates from angular)",
                          check=one_of(("accel", "twist"))),
    "rgb_qos": Param("sensor_data", "str", "QoS of the colour subscription", check=one_of(QOS_NAMES)),
    "depth_qos": Param("sensor_data", "str", "QoS of the depth subscription", check=one_of(QOS_NAMES)),
    "camera_info_qos": Param("sensor_data", "str", "QoS of the CameraInfo subscription", check=one_of(QOS_NAMES)),
    "imu_qos": Param("sensor_data", "str", "QoS of the IMU subscription", check=one_of(QOS_NAMES)),
    "control_qos": Param("reliable", "str", "QoS of the control subscription", check=one_of(QOS_NAMES)),
    "frame_queue": Param(1, "int", "frames waiting for the filter: 1 keeps only the newest (live sensors: "
                         "never lag behind); more queues them (complete bag replays; the oldest is dropped "
                         "when full)", check=lambda v: None if v >= 1 else "must be >= 1"),
    "queue_size": Param(10, "int", "depth of the image subscriptions and of the synchroniser queues (IMU: "
                        "100x, control: 10x)", check=lambda v: None if v >= 1 else "must be >= 1"),
    "sync_slop": Param(0.02, "float", "seconds within which colour, depth and CameraInfo stamps must lie",
                       dynamic=True, check=non_negative),
    "depth_scale": Param(0.001, "float", "metres per unit of integer (16UC1/mono16) depth; 32FC1 is metres",
                         dynamic=True, check=positive),
    "min_valid_depth_fraction": Param(0.05, "float", "frames with fewer valid depth pixels (finite, > 0, < "
                                      "max_depth of the filter config) are rejected as bad_depth",
                                      dynamic=True, check=fraction),
    "max_image_pixels": Param(2_100_000, "int", "colour images with more pixels are rejected as bad_image (a step "
                              "costs time and memory with the pixels; 1920x1080 fits): resize them (image_proc) or "
                              "raise this", dynamic=True, check=lambda v: None if v >= 1 else "must be >= 1"),
    "min_smooth_depth_fraction": Param(0.5, "float", "frames whose neighbouring valid depth pixels agree (within 5%) "
                                       "less often are noise, rejected as bad_depth (real depth: over 99%); the "
                                       "first frame of a map needs at least 0.8", dynamic=True, check=fraction),
    "intrinsics_source": Param("camera_info", "str", "camera_info: from the synchronised CameraInfo; "
                               "parameters: from `intrinsics` and `distortion` (colour and depth only are "
                               "synchronised)", check=one_of(("camera_info", "parameters"))),
    "rectified_input": Param(False, "bool", "the images are rectified (image_rect topics): the camera is "
                             "CameraInfo's P and no distortion is removed (K and D describe the raw image)"),
    "intrinsics": Param([0.0, 0.0, 0.0, 0.0], "floats", "fx fy cx cy of the colour (stereo: left) camera "
                        "(intrinsics_source: parameters)", check=intrinsics_check),
    "distortion": Param([0.0, 0.0, 0.0, 0.0, 0.0], "floats", "k1 k2 p1 p2 k3 (intrinsics_source: parameters)",
                        check=count(5)),
    "depth_intrinsics": Param([0.0, 0.0, 0.0, 0.0], "floats", "fx fy cx cy of the depth camera when it differs "
                              "from the colour camera (zeros: depth is registered to colour)",
                              check=intrinsics_check),
    # -- stereo depth (depth_source: stereo)
    "depth_source": Param("depth", "str", "depth: the depth image on depth_topic; stereo: depth computed from "
                          "the left (rgb_topic) and right (right_topic) images, rectified + OpenCV SGBM; the "
                          "filter's camera is then the rectified left camera (T_base_camera and T_body_camera "
                          "stay those of the left camera)", check=one_of(DEPTH_SOURCES)),
    "right_topic": Param("", "str", "right image of the stereo pair (sensor_msgs/Image, mono8 or colour; same "
                         "size and stamps as the left image on rgb_topic)"),
    "right_qos": Param("sensor_data", "str", "QoS of the right image subscription", check=one_of(QOS_NAMES)),
    "right_intrinsics": Param([0.0, 0.0, 0.0, 0.0], "floats", "fx fy cx cy of the right camera (the left one: "
                              "`intrinsics` or the CameraInfo)", check=intrinsics_check),
    "right_distortion": Param([0.0, 0.0, 0.0, 0.0, 0.0], "floats", "k1 k2 p1 p2 k3 of the right camera",
                              check=count(5)),
    "T_left_right": Param([], "floats", "right camera -> left camera transform, 16 numbers row-major (EuRoC: "
                          "inv(T_BS of cam0) @ T_BS of cam1); the right camera must lie to the right",
                          check=transform(allow_empty=True)),
    "stereo_num_disparities": Param(StereoConfig.num_disparities, "int", "SGBM disparity search range in px, a "
                                    "multiple of 16: the nearest depth seen is f * baseline / this (EuRoC: 0.5 m "
                                    "at 96); more is slower", check=_num_disparities),
    "stereo_block_size": Param(StereoConfig.block_size, "int", "SGBM matching window in px (odd): larger fills "
                               "more of weakly textured surfaces, with blurrier depth edges", check=_block_size),
    "stereo_max_depth": Param(StereoConfig.max_depth, "float", "stereo depth farther than this (m) is invalid; "
                              "its error grows as z^2 / (f * baseline)", check=_stereo_max_depth),
    # -- filter
    "filter_config": Param("", "str", "FilterConfig YAML: a path, or a file name in config/ (e.g. "
                           "prism_tum.yaml); empty = built-in defaults"),
    "transition_model": Param("", "str", "constant_velocity | imu | control; empty = the filter config's",
                              check=one_of(TRANSITION_MODELS, allow_empty=True)),
    "device": Param("", "str", "auto | cpu | cuda | cuda:N; empty = the filter config's"),
    "backend": Param("", "str", "auto | fused | torch: the per-frame stages as fused Warp kernels (compiled once "
                     "per machine, loaded at start-up) or the torch reference; empty = the filter config's",
                     check=one_of(BACKENDS, allow_empty=True)),
    "T_body_camera": Param([], "floats", "camera -> body (IMU) transform, 16 numbers row-major; empty = the "
                           "filter config's", check=transform(allow_empty=True)),
    "T_base_camera": Param(list(IDENTITY16), "floats", "camera -> base_frame transform, 16 numbers row-major",
                           check=transform(allow_empty=False)),
    # -- behaviour
    "time_jump_threshold": Param(1.0, "float", "a frame this many seconds from the previous one is held back: "
                                 "when the next frame follows it, a jump back (looped bag) resets filter and map and "
                                 "a jump forward is a gap, else it was an outlier stamp (dropped); a smaller step "
                                 "back is out of order (dropped)",
                                 dynamic=True, check=positive),
    "input_timeout": Param(1.0, "float", "seconds with images arriving but no synchronised set before a "
                           "missing or unsynchronised stream is reported", dynamic=True, check=positive),
    "imu_wait": Param(0.1, "float", "seconds a frame waits for the IMU sample that closes its window (IMU "
                      "messages may arrive after the images); 0 = no wait", dynamic=True, check=non_negative),
    "publish_when_lost": Param(True, "bool", "publish the predicted pose while tracking is lost", dynamic=True),
    "map_origin": Param("base", "str", "where the map starts when no pose is given: base = the first base pose "
                        "(REP-103: level when the base starts level); camera = the first camera pose (as `prism-ros "
                        "run`)", check=one_of(("base", "camera"))),
    "level_map": Param(True, "bool", "imu transition model: once the filter has estimated gravity (dynamics "
                       "gravity_alignment_s after the start) the map restarts level (z up) if it is tilted more "
                       "than level_tolerance_deg; without it the map is the first base pose as it is"),
    "level_tolerance_deg": Param(0.5, "float", "tilt of the start frame (deg) below which the map is kept",
                                 check=non_negative),
    "lost_error_after": Param(2.0, "float", "seconds of frames lost in a row (frame stamps) after which /diagnostics "
                              "reports ERROR (WARN before); also the seconds of no input (no synchronised set for "
                              "input_timeout: input 'stopped', WARN) before ERROR", dynamic=True,
                              check=non_negative),
    # -- outputs
    "map_frame": Param("map", "str", "world frame of pose, path, map and TF", dynamic=True, check=not_empty),
    "odom_frame": Param("odom", "str", "odometry frame (REP-105: continuous; PRISM's own or another node's)",
                        dynamic=True, check=not_empty),
    "base_frame": Param("base_link", "str", "robot frame; the camera is placed by T_base_camera or TF", dynamic=True,
                        check=not_empty),
    "publish_odom_tf": Param(True, "bool", "PRISM is the odometry: broadcast odom -> base_frame per frame; false when "
                             "another node (wheel odometry, PX4, robot_localization) owns it: map -> odom then comes "
                             "from its odom -> base_frame on /tf at each frame's stamp", dynamic=True),
    "publish_map_odom_tf": Param(True, "bool", "broadcast map -> odom (relocalizations move it; odom stays "
                                 "continuous)", dynamic=True),
    "transform_publish_period": Param(0.05, "float", "seconds between map -> odom broadcasts (steady clock)",
                                      check=positive),
    "transform_tolerance": Param(0.1, "float", "map -> odom is stamped this far ahead of the clock (as "
                                 "slam_toolbox does); external odometry may be this much older than a frame",
                                 dynamic=True, check=non_negative),
    "extrinsics_source": Param("parameter", "str", "parameter: the camera on the base is T_base_camera; tf: "
                               "base_frame -> the colour image's frame_id, looked up on /tf_static (a URDF through "
                               "robot_state_publisher) before the first frame", check=one_of(("parameter", "tf"))),
    "publish_camera_tf": Param(True, "bool", "with extrinsics_source parameter: latch base_frame -> the colour "
                               "image's frame_id (T_base_camera) on /tf_static; false when robot_state_publisher "
                               "already does"),
    "path_max_length": Param(1000, "int", "poses kept on ~/path", dynamic=True,
                             check=lambda v: None if v >= 1 else "must be >= 1"),
    "map_publish_period": Param(1.0, "float", "seconds between mesh/cloud updates (steady clock)", dynamic=True,
                                check=positive),
    "map_colouring": Param("colour", "str", "mesh and cloud colours: colour | uncertainty",
                           check=one_of(("colour", "uncertainty"))),
    "diagnostics_period": Param(1.0, "float", "seconds between /diagnostics messages (steady clock)",
                                check=positive),
    "map_path": Param("prism_map.pt", "str", "file of ~/save_map and ~/load_map (relative to the working "
                      "directory; the mesh goes next to it as .ply); in localization mode the map loaded at start",
                      dynamic=True, check=not_empty),
    "autostart": Param(True, "bool", "configure and activate at start-up; false: stay unconfigured until a "
                       "lifecycle manager (or `ros2 lifecycle set`) configures and activates the node"),
    "mode": Param("slam", "str", "slam: track and map; localization: load map_path at start, track against it and "
                  "never change it (~/load_map swaps the map, ~/save_map is refused)",
                  check=one_of(("slam", "localization"))),
    **prediction_publishing.PARAMETERS,
}


def convert_parameter(name: str, value: Any) -> Any:
    """The typed, checked value of parameter ``name``; InputError naming the parameter, the problem and the fix."""
    return convert_value(PARAMETERS[name], name, value, "config/prism.yaml")


def resolve_config_path(value: str) -> Path:
    """A filter_config value: an existing path, or a file name found in config/."""
    path = Path(value).expanduser()
    if path.is_file():
        return path
    from prism_ros.resources import config_file

    found = config_file(value, required=False) if "/" not in value else None
    if found is None:
        raise InputError(f"filter_config {value!r} not found", "give a YAML path or a file name in config/ "
                         "(e.g. prism_tum.yaml)")
    return found


def build_filter_config(values: dict) -> FilterConfig:
    """FilterConfig from the filter_config file and the transition_model/device/T_body_camera overrides."""
    config = FilterConfig.from_yaml(resolve_config_path(values["filter_config"])) if values["filter_config"] \
        else FilterConfig()
    if values["transition_model"]:
        config = replace(config, dynamics=replace(config.dynamics, model=values["transition_model"]))
    if values["device"]:
        config = replace(config, device=values["device"])
    if values["backend"]:
        config = replace(config, backend=values["backend"])
    if values["T_body_camera"]:
        config = replace(config, T_body_camera=tuple(values["T_body_camera"]))
    if config.dynamics.model not in TRANSITION_MODELS:
        raise InputError(f"transition model {config.dynamics.model!r} is unknown",
                         f"use one of {', '.join(TRANSITION_MODELS)}")
    config.resolved_device()  # InputError for cuda without CUDA and for names torch does not know
    config.resolved_backend()  # InputError naming the install when fused is asked for without Warp
    if config.dynamics.model == "imu" and not values["imu_topic"]:
        raise InputError("transition model imu needs IMU samples but imu_topic is empty",
                         "set imu_topic, or transition_model:=constant_velocity")
    if config.dynamics.model == "control" and not values["control_topic"]:
        raise InputError("transition model control needs commands but control_topic is empty",
                         "set control_topic (and control_type), or transition_model:=constant_velocity")
    return config


def stereo_config(values: dict) -> StereoConfig:
    """The StereoConfig of the stereo_* parameters (the other SGBM settings keep the core's defaults)."""
    return StereoConfig(num_disparities=values["stereo_num_disparities"], block_size=values["stereo_block_size"],
                        max_depth=values["stereo_max_depth"]).check()


def right_camera(values: dict, width: int, height: int) -> Intrinsics:
    """The right camera's calibration (parameters) for images of ``width`` x ``height``."""
    fx, fy, cx, cy = values["right_intrinsics"]
    return Intrinsics(fx, fy, cx, cy, width, height, tuple(values["right_distortion"]))


def check_inputs(values: dict) -> None:
    """InputError for settings that are each valid but do not fit together (intrinsics, prediction)."""
    check_intrinsics_source(values)
    if problem := prediction_publishing.mismatch(values):
        raise InputError(problem, "set rollout_step <= rollout_horizon")


def describe_inputs(values: dict) -> str:
    """The node's inputs in one line (for the start-up log)."""
    v = values
    second = f"{v['right_topic']} (stereo depth)" if v["depth_source"] == "stereo" else v["depth_topic"]
    return (f"inputs {v['rgb_topic']} + {second}"
            + (f" + {v['camera_info_topic']}" if v["intrinsics_source"] == "camera_info" else " (intrinsics from "
               "parameters)") + (f", IMU {v['imu_topic']}" if v["imu_topic"] else "")
            + (f", control {v['control_topic']}" if v["control_topic"] else ""))


def check_stereo_parameters(values: dict) -> np.ndarray:
    """Start-up checks of ``depth_source: stereo`` (InputError with the fix); ``T_left_rect`` of the rig.

    The image size is only known with the first pair, so the rig is rectified here at a nominal size (twice
    the principal point): that already catches a zero baseline, a vertical rig or swapped cameras, and gives
    the rectifying rotation (which depends on the extrinsic only). Without left intrinsics (CameraInfo) the
    right camera's stand in for this check."""
    if not values["right_topic"].strip():
        raise InputError("depth_source is stereo but right_topic is empty",
                         "set right_topic to the right camera's image (e.g. /cam1/image_raw), or depth_source:=depth")
    if not any(values["right_intrinsics"]):
        raise InputError("depth_source is stereo but right_intrinsics is unset",
                         "set right_intrinsics:=[fx, fy, cx, cy] and right_distortion of the right camera")
    if not values["T_left_right"]:
        raise InputError("depth_source is stereo but T_left_right is unset",
                         "set T_left_right (16 numbers, right camera -> left camera; EuRoC: "
                         "inv(T_BS cam0) @ T_BS cam1)")
    if any(values["depth_intrinsics"]):
        raise InputError("depth_intrinsics is set but stereo depth is computed in the rectified left camera",
                         "leave depth_intrinsics unset with depth_source:=stereo")
    config = stereo_config(values)
    known = values["intrinsics_source"] == "parameters"
    left = values["intrinsics"] if known else values["right_intrinsics"]
    width = int(round(2 * max(left[2], values["right_intrinsics"][2]))) + 1
    height = int(round(2 * max(left[3], values["right_intrinsics"][3]))) + 1
    left_camera = Intrinsics(*left, width, height, tuple(values["distortion" if known else "right_distortion"]))
    try:
        rig = StereoRectifier(left_camera, right_camera(values, width, height), values["T_left_right"], config=config)
    except InputError as error:
        raise InputError(f"stereo rig: {error.problem}", f"{error.fix}; check T_left_right (right camera -> left "
                         "camera), intrinsics, right_intrinsics and the distortions") from None
    return rig.T_left_rect


def parameters_yaml() -> str:
    """config/prism.yaml: every parameter with its default and meaning (a ROS 2 parameters file)."""
    return parameters_file(PARAMETERS, [
        "prism_node parameters with their defaults (a ROS 2 parameters file: --params-file config/prism.yaml).",
        "Sensor presets that override some of them: config/sensors/<sensor>.yaml. `dynamic` ones may be changed",
        "at runtime (ros2 param set); the others are read at start-up (invalid values: exit code 2)."])

"""ACE relocalization (Brachmann et al., CVPR 2023): a pretrained scene-agnostic encoder, a scene-specific
MLP head trained in minutes over a shuffled buffer of features from all mapping images, and RANSAC + PnP.

Modules: :mod:`encoder` (network, shipped weights, id), :mod:`head`, :mod:`buffer` (feature buffer with
ACE's augmentations), :mod:`mapping` (curriculum, recipes), :mod:`relocalize` (RANSAC-PnP, covariance),
:mod:`mapfile` (save/load/validate), :mod:`ensemble` (k-means chunks), :mod:`pretrain` (encoder training
on procedural scenes), :mod:`cli` (``prism-ros ace ...``). No ROS imports.
"""
from prism_ros.ace.encoder import Encoder, load_encoder, random_encoder
from prism_ros.ace.mapfile import AceMap, load_map, save_map
from prism_ros.ace.mapping import CPU_RECIPE, GPU_RECIPE, TEST_RECIPE, Recipe, get_recipe, map_scene
from prism_ros.ace.relocalize import Relocalization, ransac_pnp, relocalize

__all__ = ["AceMap", "CPU_RECIPE", "Encoder", "GPU_RECIPE", "Recipe", "Relocalization", "TEST_RECIPE",
           "get_recipe", "load_encoder", "load_map", "map_scene", "random_encoder", "ransac_pnp", "relocalize",
           "save_map"]

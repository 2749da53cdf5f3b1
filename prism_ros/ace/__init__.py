"""ACE relocalization (Brachmann et al., CVPR 2023): a pretrained scene-agnostic encoder, a scene-specific
MLP head trained in minutes over a shuffled buffer of features from all mapping images, and RANSAC + PnP.

Modules: :mod:`encoder` (network, shipped weights, id), :mod:`head`, :mod:`buffer` (feature buffer with
ACE's augmentations), :mod:`mapping` (curriculum, recipes), :mod:`relocalize` (RANSAC-PnP, covariance),
:mod:`mapfile` (save/load/validate), :mod:`ensemble` (k-means chunks), :mod:`pretrain` (encoder training
on procedural scenes). Beside ACE: :mod:`features` (SIFT + PnP, the classical peer and second opinion),
:mod:`verify` (the depth check of a pose against the map's surfaces) and :mod:`hybrid` (the verified answer
of the two). No ROS imports.
"""
import importlib

#: public name -> module that defines it; imported on first use (PEP 562), so mounting the `prism-ros ace`
#: commands (prism_ros.cli.ace) does not load torch for `prism-ros --help`
_EXPORTS = {
    "Encoder": "encoder", "load_encoder": "encoder", "random_encoder": "encoder",
    "AceMap": "mapfile", "load_map": "mapfile", "save_map": "mapfile",
    "CPU_RECIPE": "mapping", "GPU_RECIPE": "mapping", "TEST_RECIPE": "mapping", "Recipe": "mapping",
    "get_recipe": "mapping", "map_scene": "mapping",
    "Relocalization": "relocalize", "ransac_pnp": "relocalize",
}  # relocalize() itself: import it from prism_ros.ace.relocalize (the name is also the submodule's)
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"prism_ros.ace.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

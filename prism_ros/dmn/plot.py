"""An example of sequential global localization as a PNG: the environment top-down, the context views, the
particles after each step (coloured by step), the true trajectory and the estimates."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prism_ros.dmn.environments import draw_layout, make_environments, render, sample_poses, split_seeds
from prism_ros.dmn.model import LocalizationMethod
from prism_ros.dmn.particles import initial_belief
from prism_ros.dmn.training import episode_from_views


def plot_episode(method: LocalizationMethod, domain: str, out: Path, steps: int = 5, contexts: int = 4,
                 particles: int = 2048, episode: int = 0, title: str = "") -> Path:
    """Run ``method`` on test episode ``episode`` from a uniform belief and draw it to ``out`` (PNG).

    The particles after step t come from a run on the first t + 1 queries with the same random draws, so the
    panels show one filter run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = make_environments(domain, split_seeds("test", 1, start=episode))
    poses = sample_poses(envs, contexts + steps)
    data = episode_from_views(render(envs, poses), poses, contexts)
    method.eval()
    clouds, estimates = [], None
    with torch.no_grad():
        for t in range(1, steps + 1):
            generator = torch.Generator().manual_seed(episode)
            start, log_weights = initial_belief("global", data.query_poses[:, 0], particles, generator=generator)
            output = method(data.context_images, data.context_poses, data.query_images[:, :t], data.odometry[:, :t],
                            start, log_weights, true_poses=data.query_poses[:, :t], generator=generator)
            if output.particles is not None:
                weights = torch.softmax(output.log_weights[0], -1).numpy()
                keep = np.argsort(weights)[-min(400, particles):]  # the heaviest: what the belief says
                clouds.append(output.particles[0, keep].numpy())
            estimates = output.estimates[0].numpy()
    fig, ax = plt.subplots(figsize=(6, 6))
    draw_layout(ax, 0, envs, data.context_poses[0], arrow=0.15, pose_colour="royalblue")
    colours = plt.cm.viridis(np.linspace(0.1, 0.9, max(1, len(clouds))))
    for t, (cloud, colour) in enumerate(zip(clouds, colours)):
        ax.scatter(cloud[:, 0], cloud[:, 1], s=2, color=colour, alpha=0.5, label=f"particles t={t + 1}")
    truth = data.query_poses[0].numpy()
    ax.plot(truth[:, 0], truth[:, 1], "k-o", markersize=4, label="true trajectory")
    ax.plot(estimates[:, 0], estimates[:, 1], "r--x", markersize=6, label="estimate")
    error = float(((estimates[-1, :2] - truth[-1, :2]) ** 2).sum())
    ax.set_title(title or f"{domain}: sequential global localization, final squared error {error:.3f}")
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out

"""Torch's CPU thread count, set the same way by the filter and by every command's ``--threads``."""
from __future__ import annotations


def use_cpu_threads(threads: int) -> None:
    """Torch's intra-op CPU threads (a command's ``--threads``, ``FilterConfig.cpu_threads``); 0 keeps torch's
    default."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)

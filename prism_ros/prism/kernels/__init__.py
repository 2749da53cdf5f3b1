"""Fused kernels: one NVIDIA Warp source per hot loop, compiled for the CPU (Warp's bundled LLVM) and CUDA.

PRISM's per-frame stages (observe, render, track, map) in torch eager pay per-op overhead and a memory pass per
op: a render is ~20k small torch calls. Each stage here is one or a few Warp kernels over the same tensors
(zero-copy through ``wp.from_torch``), with the map's layout unchanged. The torch code in the stage modules
stays the reference, and equivalence tests keep the two in step; ``FilterConfig.backend`` picks one:

- ``fused``: these kernels (an :class:`~prism_ros.errors.InputError` when ``warp`` cannot be imported);
- ``torch``: the reference implementation;
- ``auto``: fused when Warp imports, else torch.

Why Warp: one Python source for both devices, an on-disk kernel cache (a module compiles once per machine, then
loads in milliseconds), and CPU launches that run outside the GIL (ctypes calls release it), so a ROS
executor keeps running while the filter works. Compilation is paid at start-up by :func:`warm_up`.
"""
from __future__ import annotations

import importlib
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

from prism_ros.errors import InputError

BACKENDS = ("auto", "torch", "fused")
# modules holding @wp.kernel functions, loaded (compiled or read from the cache) by warm_up
KERNEL_MODULES = tuple(f"prism_ros.prism.kernels.{stage}" for stage in ("render", "integrate", "track", "observe"))

_lock = threading.Lock()
_wp = None
_import_error: str | None = None


def warp():
    """The initialised ``warp`` module (quiet, initialised once per process); InputError when it is missing."""
    global _wp, _import_error
    with _lock:
        if _wp is None and _import_error is None:
            try:
                import warp as wp

                wp.config.log_level = 40  # errors only: no greeting
                with _quiet_native_stderr():
                    wp.init()
                _wp = wp
            except Exception as error:  # ImportError, or a broken install failing in init
                _import_error = f"{type(error).__name__}: {error}"
    if _wp is None:
        raise InputError(f"the fused backend needs NVIDIA Warp, which could not be loaded ({_import_error})",
                         "pip install warp-lang, or set backend: torch")
    return _wp


@contextmanager
def _quiet_native_stderr():
    """On a machine where torch sees no CUDA, Warp's native start-up prints "Could not find or load the NVIDIA CUDA
    driver" to the process's stderr: noise there (and it would break a node's one-line errors). File descriptor 2
    goes to /dev/null for the call; failures still raise."""
    import torch

    if torch.cuda.is_available():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def available() -> bool:
    """Whether Warp imports and initialises here."""
    try:
        warp()
    except InputError:
        return False
    return True


def resolve_backend(name: str) -> str:
    """'torch' or 'fused' for a configured backend name (see the module docstring)."""
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}", f"use one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "fused" if available() else "torch"
    if name == "fused":
        warp()  # raises the install hint
    return name


def device_name(device) -> str:
    """Warp's name of a torch device (``cpu``, ``cuda:N``)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return "cpu"


def array(tensor, dtype=None):
    """A zero-copy Warp array of a contiguous torch tensor (``dtype`` e.g. ``wp.vec3`` to view (N,3) as N vectors)."""
    wp = warp()
    return wp.from_torch(tensor.contiguous() if not tensor.is_contiguous() else tensor, dtype=dtype,
                         requires_grad=False)


# ----------------------------------------------------------------------------- launches
MIN_THREADS_PER_PART = 4096  # a CPU range smaller than this is not worth a thread hand-off
_cpu_threads = 0  # 0: one per core this process may run on
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0


def set_cpu_threads(threads: int) -> None:
    """Threads the fused kernels use on the CPU (``FilterConfig.kernel_threads``); 0 = one per available core."""
    global _cpu_threads
    if threads < 0:
        raise InputError(f"kernel_threads must be >= 0, got {threads}", "use 0 (one per core) or a thread count")
    _cpu_threads = int(threads)


def cpu_threads() -> int:
    return _cpu_threads or len(os.sched_getaffinity(0))


def parts(count: int, device) -> int:
    """How many ranges :func:`launch` splits ``count`` threads into on ``device`` (1 on CUDA)."""
    if device_name(device) != "cpu":
        return 1
    return max(1, min(cpu_threads(), count // MIN_THREADS_PER_PART))


def launch(kernel, count: int, inputs: list, device) -> int:
    """Run ``kernel`` for ``count`` threads; returns the number of ranges. The kernel's first two inputs are
    ``first`` (the index of its thread 0: a thread's index is ``wp.tid() + first``) and ``part`` (which range: a
    row of a per-range output, since Warp's CPU atomics are plain adds). On CUDA it is one launch; on the CPU,
    where Warp runs a launch on the calling thread, :func:`parts` contiguous ranges run on as many threads (each
    launch releases the GIL), the first on the calling thread. On CUDA the kernel runs on torch's current stream,
    so it is ordered with torch's work on the same tensors."""
    import torch

    wp = warp()
    name = device_name(device)
    stream = wp.stream_from_torch(torch.cuda.current_stream(name)) if name != "cpu" else None
    count = int(count)
    pieces = parts(count, device)
    if count == 0:
        return pieces
    if pieces == 1:
        wp.launch(kernel, dim=count, inputs=[0, 0, *inputs], device=name, stream=stream)
        return 1
    bounds = [count * k // pieces for k in range(pieces + 1)]
    run_parallel([partial(wp.launch, kernel, dim=bounds[k + 1] - bounds[k], inputs=[bounds[k], k, *inputs],
                          device=name) for k in range(pieces)])
    return pieces


def run_parallel(calls: list) -> None:
    """Run ``calls`` (no arguments) concurrently: the first on the calling thread, the others on the kernel thread
    pool (Warp's CPU launches release the GIL); returns when all are done, raising the first error."""
    global _pool, _pool_workers
    with _lock:
        if _pool is None or _pool_workers < len(calls) - 1:
            _pool_workers = max(len(calls) - 1, 1)
            _pool = ThreadPoolExecutor(max_workers=_pool_workers, thread_name_prefix="prism_kernels")
    futures = [_pool.submit(call) for call in calls[1:]]
    try:
        if calls:
            calls[0]()
    finally:
        for future in futures:
            future.result()


def warm_up(device="cpu") -> dict[str, float]:
    """Compile (first run on a machine) or load from Warp's disk cache every kernel module for ``device``, so no
    frame pays it; returns seconds per module."""
    wp = warp()
    name = device_name(device)
    seconds = {}
    for module_name in KERNEL_MODULES:
        start = time.perf_counter()
        wp.load_module(importlib.import_module(module_name), device=name)
        seconds[module_name.rsplit(".", 1)[-1]] = time.perf_counter() - start
    return seconds

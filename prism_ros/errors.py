"""One error type for bad input: it names the problem and the fix, and the CLI prints it in one line."""
from __future__ import annotations


class InputError(Exception):
    """Bad user input (file, folder, bag, parameter). The message says what is wrong and how to fix it.

    The CLI catches it and prints the message without a traceback; nodes log it, count it in
    diagnostics and keep running.
    """

    def __init__(self, problem: str, fix: str | None = None, path: object | None = None):
        self.problem, self.fix, self.path = problem, fix, path
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{problem}" + (f" -> {fix}" if fix else ""))


def reports_input_errors(command):
    """Decorator for CLI commands: an InputError becomes one line on stderr and exit code 2, no traceback; so
    does an OSError (a path to read or write that the file system refuses: its user gave it)."""
    import functools

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (InputError, OSError) as error:
            import typer
            from rich.console import Console

            if isinstance(error, OSError):
                error = InputError(f"{error.strerror or error}: {error.filename or ''}".rstrip(": "),
                                   "give a path that exists and that you may read or write")
            Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def read_torch_file(path, problem: str, fix: str, detail: bool = True):
    """``torch.load`` of a tensors-only file (``weights_only``: no pickled code runs); a missing, empty or
    special file and any unreadable one (corrupt, truncated, not torch) is an InputError
    "<problem> (<reason>)" naming the path. Only a regular file is opened (a FIFO would block)."""
    import errno
    import pickle
    import zipfile
    from pathlib import Path

    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(f"{problem} (file not found)", fix, path)
    if not path.is_file():
        raise InputError(f"{problem} ({'a directory' if path.is_dir() else 'not a regular file'})", fix, path)
    if path.stat().st_size == 0:
        raise InputError(f"{problem} (the file is empty)", fix, path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = f"{type(error).__name__}: {str(error)[:120]}" if detail else type(error).__name__
        if isinstance(error, pickle.UnpicklingError):  # torch's own text is a page about weights_only
            reason = "UnpicklingError: not a torch file, or one holding more than tensors and plain values"
        elif isinstance(error, (EOFError, zipfile.BadZipFile)) or "PytorchStreamReader" in str(error) \
                or (isinstance(error, OSError) and error.errno == errno.EINVAL):  # EINVAL: a seek past a cut end
            reason = f"{type(error).__name__}: truncated or damaged"
        raise InputError(f"{problem} ({reason})", fix, path) from None


def check_int(value, name: str, low: int, high: int, fix: str, path) -> int:
    """``value`` if it is an int in [low, high] (a size read from a file, checked before anything is allocated
    with it), else an InputError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{name} must be an integer in [{low}, {high}], got {_short(value)}", fix, path)
    return value


def check_number(value, name: str, low: float, high: float, fix: str, path) -> float:
    """``value`` as a float if it is a finite real number in [low, high], else an InputError naming it."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise InputError(f"{name} must be a finite number in [{low:g}, {high:g}], got {_short(value)}", fix, path)
    return float(value)


def check_tensor(value, name: str, shape: tuple, fix: str, path, dtypes=None, limit: float | None = None):
    """``value`` if it is a tensor of ``shape`` (None: any size on that axis), of one of ``dtypes`` (default:
    any floating type), with finite values (of magnitude <= ``limit`` if given); else an InputError naming it."""
    import torch

    ok = torch.is_tensor(value) and value.dim() == len(shape) \
        and all(want is None or got == want for got, want in zip(value.shape, shape)) \
        and (value.dtype in dtypes if dtypes else value.is_floating_point())
    if not ok:
        want = "x".join("N" if s is None else str(s) for s in shape) or "scalar"
        kind = "/".join(str(d).replace("torch.", "") for d in dtypes) if dtypes else "float"
        got = f"{tuple(value.shape)} {str(value.dtype).replace('torch.', '')}" if torch.is_tensor(value) \
            else type(value).__name__
        raise InputError(f"{name} must be a {want} {kind} tensor, got {got}", fix, path)
    if value.is_floating_point():
        if not bool(torch.isfinite(value).all()):
            raise InputError(f"{name} has non-finite values (NaN or inf)", fix, path)
        if limit is not None and value.numel() and float(value.abs().max()) > limit:
            raise InputError(f"{name} has values beyond {limit:g} (largest {float(value.abs().max()):.3g})",
                             fix, path)
    return value


def check_weights(build, state, name: str, fix: str, path) -> dict:
    """``state`` checked against the state dict of the module ``build()`` makes, built on the meta device (no
    memory, so a file claiming a huge configuration is refused before anything is allocated): same keys and
    shapes, floating where the module is floating (files store fp16), the same dtype otherwise, finite values.
    Returns it converted to the module's dtypes, ready for ``load_state_dict``."""
    import torch

    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise InputError(f"{name} must be a dict of named tensors", fix, path)
    try:
        with torch.device("meta"):
            expected = build().state_dict()
    except (ValueError, TypeError, RuntimeError) as error:  # a configuration the network cannot take
        raise InputError(f"{name}: the configuration gives no network ({str(error)[:120]})", fix, path) from None
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or extra:
        parts = [f"{what} {_short(keys)}" for what, keys in (("missing", missing), ("unexpected", extra)) if keys]
        raise InputError(f"{name} do not fit the configuration ({', '.join(parts)})", fix, path)
    converted = {}
    for key, want in expected.items():
        value = state[key]
        dtypes = None if want.is_floating_point() else (want.dtype,)
        check_tensor(value, f"{name} {key}", tuple(want.shape), fix, path, dtypes)
        converted[key] = value.to(want.dtype)
    return converted


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


FILE_KINDS = {  # the format (or kind) tag of each torch file prism_ros writes -> what to call it in a message
    "prism_ros.ace.map": "an ACE map (`prism-ros ace map`)",
    "prism_ros.ace.encoder": "an ACE encoder (`prism-ros ace pretrain-encoder`)",
    "prism_ros.GaussianSdfMap": "a PRISM map (`prism-ros run`, prism_node ~/save_map)",
    "prism_ros.dynamics_residual": "a dynamics model (`prism-ros dynamics train`)",
    "prism_ros.dmn": "DMN weights (`prism-ros dmn train`)",
    "prism_ros.dmn.contexts": "a DMN context file",
    "prism_ros.dmn.environments": "a DMN data set (`prism-ros dmn generate`)",
}


def file_kind(blob) -> str:
    """" (it is <kind>)" for a file of another prism_ros kind, for "not a ... file" messages; else ""."""
    tag = (blob.get("format") or blob.get("kind")) if isinstance(blob, dict) else None
    return f" (it is {FILE_KINDS[tag]})" if isinstance(tag, str) and tag in FILE_KINDS else ""

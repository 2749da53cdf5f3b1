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
    """``torch.load`` of a tensors-only file (``weights_only``: no pickled code runs); any unreadable file
    (corrupt, truncated, not torch) is an InputError "<problem> (<error type>[: <message>])" naming the path."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = f"{type(error).__name__}: {str(error)[:120]}" if detail else type(error).__name__
        raise InputError(f"{problem} ({reason})", fix, path) from None

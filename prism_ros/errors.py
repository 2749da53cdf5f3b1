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

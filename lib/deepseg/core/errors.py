"""The error a user sees: one line naming the file, key or tile at fault and what to do."""

from __future__ import annotations

BRIEF_CHARS = 300  # longest message ``brief`` returns


class DeepSegError(RuntimeError):
    """A problem the user can fix (bad input, missing file, refused setting).

    Stage scripts print its message as one line and exit with status 2; anything else is a
    bug and keeps its traceback.
    """


def brief(exc: BaseException, *, named: bool = False) -> str:
    """An exception as one line of at most ``BRIEF_CHARS``: the last non-empty line of its
    message (TorchScript, ONNX Runtime, CUDA, GDAL and pickle put the actual error last,
    after a traceback), whitespace collapsed; ``named`` prefixes the exception's type unless it
    is a DeepSegError (whose message already says what is wrong)."""
    text = getattr(exc, "message", None) or str(exc)
    lines = [" ".join(line.split()) for line in str(text).splitlines() if line.strip()]
    line = lines[-1][:BRIEF_CHARS] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {line}" if named and not isinstance(exc, DeepSegError) else line

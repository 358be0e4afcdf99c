"""The error a user sees: one line naming the file, key or tile at fault and what to do."""


class DeepSegError(RuntimeError):
    """A problem the user can fix (bad input, missing file, refused setting).

    Stage scripts print its message as one line and exit with status 2; anything else is a
    bug and keeps its traceback.
    """

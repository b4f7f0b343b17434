"""The one error type for user mistakes: the CLI prints its message on one line, without a traceback."""


class UserError(Exception):
    """A problem with the user's input or options. The message names the problem and the next step."""

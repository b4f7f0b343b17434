"""The one error type for user mistakes: the CLI prints its message on one line, without a traceback."""


class UserError(Exception):
    """A problem with the user's input or options. The message names the problem and the next step. The CLI
    prints it as one line and exits with `exit_code`."""

    exit_code = 2


TF_EXTRA_HINT = "pip install 'rembert-convert[tf]'"


def require_tensorflow(what: str, alternative: str = "") -> None:
    """The lean install has no TensorFlow (it is the [tf] extra): say so in one line before any work."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        raise UserError(f"{what} needs TensorFlow, which is not installed: {TF_EXTRA_HINT}"
                        + (f", or {alternative}" if alternative else ""))

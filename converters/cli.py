"""`convert-rembert`: thin Click commands over the library functions in `converters/`.

Each command parses options, calls one library function and formats its result. User mistakes raise
`UserError`, printed as one line without a traceback (unless --debug), with a non-zero exit code.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from converters.errors import UserError

EXIT_USER_ERROR = 2


def handle_user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Print UserError (and unexpected errors) as one line; show the traceback only with --debug."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:  # an internal error: still one line, the traceback is one flag away
            if debug:
                raise
            click.echo(f"error: internal error {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
                       err=True)
            sys.exit(1)

    return wrapper


debug_option = click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bar, only errors.")
force_option = click.option("--force", is_flag=True, help="Replace an existing output directory.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="rembert-convert")
def main() -> None:
    """Convert Google's original RemBERT TF1 checkpoints to PyTorch, safetensors and TF2, and the
    SentencePiece model to a fast tokenizer, with measured parity.

    \b
    Example:
      convert-rembert inspect examples/tiny-rembert/model.ckpt-3
      convert-rembert safetensors examples/tiny-rembert -o out/tiny-rembert
    """


if __name__ == "__main__":
    main()

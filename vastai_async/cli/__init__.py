"""The ``vastai-async`` command."""

from __future__ import annotations

import sys

__all__ = ["main"]

#: Exit code of a command cut short by Ctrl-C (the shell's convention: 128 + SIGINT).
_EXIT_INTERRUPTED = 130


def main() -> None:
    """Entry point of ``vastai-async``: Ctrl-C at any moment, imports included, exits 130."""
    try:
        from vastai_async.cli._app import main as run

        run()
    except KeyboardInterrupt:
        # Before the command's own handler is in place (still importing): one line, no trace.
        sys.stderr.write("interrupted\n")
        sys.exit(_EXIT_INTERRUPTED)

"""Errors a user can cause and fix: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable


class UserError(Exception):
    """Bad input or a missing optional part; the message says what to do."""

    exit_code = 2


def script_main(main: Callable[[], Any]) -> None:
    """Run a benchmark's or a script's ``main`` as the CLI runs a command: a UserError is one line and its exit code."""
    try:
        main()
    except UserError as exc:
        print(f"{os.path.basename(sys.argv[0])}: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr)
        sys.exit(130)

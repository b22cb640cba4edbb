"""``python -m kdcore``: the command line (what torchrun's ``-m kdcore`` starts)."""

import os
import sys

from kdcore.cli import main


def worker_main() -> None:
    """The command line in one of torchrun's workers, which leaves through ``os._exit`` once
    the command has ended and its output is flushed: the interpreter's finalisation can
    destroy gloo's objects in an order that aborts the process ("terminate called without an
    active exception", seen once in a few hundred two-process runs on a loaded machine),
    which would report a finished run as failed. Every file the run writes is closed by then
    (the history, the checkpoints, summary.json through a rename)."""
    code = 0
    try:
        returned = main()  # --help or --version: their 0, as the console script exits with
        code = returned if isinstance(returned, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: the process was started without it (2>&-)
                stream.flush()
    os._exit(code)


if __name__ == "__main__":
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        worker_main()
    sys.exit(main())  # as the console script does: main returns --version's or --help's 0

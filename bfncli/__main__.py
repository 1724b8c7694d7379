"""The `bfn` executable and `python -m bfncli`: Ctrl-C is said in one line (exit 130) even while the
command-line libraries are still loading."""

import signal
import sys

from bfncli.errors import Interrupted, raise_interrupted
from bfncli.log import logger


def run() -> None:
    signal.signal(signal.SIGINT, raise_interrupted)
    try:
        from bfncli.cli import main
    except Interrupted:
        logger.error("bfn: interrupted")
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()

"""`python -m wsideid` and the `wsideid` command: SIGTERM is taken as Ctrl-C from the first
moment, before the command line's modules are imported (a scheduler's time limit can arrive
while they load), and an interrupt at any moment ends the command with one line and exit 130."""
import signal
import sys

from .errors import INTERRUPTED
from .interrupt import exit_interrupted, terminated


def run() -> None:
    signal.signal(signal.SIGTERM, terminated)
    try:
        from .cli import main
    except KeyboardInterrupt:
        sys.stderr.write(f"wsideid: error: {INTERRUPTED}\n")
        exit_interrupted()
    main()


if __name__ == "__main__":
    run()

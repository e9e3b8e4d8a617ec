"""``python -m recog``: the same as the ``recog`` command."""

import sys

from recog.cli import main

if __name__ == "__main__":  # not when a spawned worker process (recog tune --jobs) imports it again
    sys.exit(main())

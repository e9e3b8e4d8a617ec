"""``python -m recog``: the same as the ``recog`` command."""

import sys

from recog.cli import main

sys.exit(main())

"""``recog`` as torchrun starts it, with one fault injected for the distributed tests:

    RECOG_TEST_EXIT_AT=RANK:STEP   that rank calls os._exit(1) before that global step, on the first
                                   attempt only (a worker that dies: torchrun --max-restarts restarts all)
    RECOG_TEST_HANG_AT=RANK:STEP   that rank sleeps for 10 minutes before that step (a hung worker:
                                   the others must stop after --dist-timeout)
    RECOG_TEST_RANK1_ARGS="..."    more arguments for rank 1 only (a rank started with another config)

Each rank also says when it decodes image files ("rank R decoded N files"): only rank 0 should.

    torchrun ... tests/helpers/ddp_worker.py train --data digits ...
"""

import os
import sys
import time

from recog.cli import main
from recog.data import files
from recog.engine import distributed, step


def _fault(name: str) -> tuple[int, int] | None:
    value = os.environ.get(name)
    if not value:
        return None
    rank, at = value.split(":")
    return int(rank), int(at)


exit_at, hang_at = _fault("RECOG_TEST_EXIT_AT"), _fault("RECOG_TEST_HANG_AT")
if exit_at and distributed.restart_count() > 0:
    exit_at = None  # the restarted workers run to the end
steps = 0
original = step.Stepper.__call__


def faulty(self, batch):  # noqa: ANN001, ANN202
    global steps
    steps += 1  # counts the budget calibration's steps too, when there is one
    if exit_at and distributed.rank() == exit_at[0] and steps == exit_at[1]:
        os._exit(1)
    if hang_at and distributed.rank() == hang_at[0] and steps == hang_at[1]:
        time.sleep(600)
    return original(self, batch)


step.Stepper.__call__ = faulty
decode_files = files.decode_files


def decoding(pairs, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    sys.stderr.write(f"rank {distributed.rank()} decoded {len(pairs)} files\n")  # one write: no interleaving
    sys.stderr.flush()
    return decode_files(pairs, *args, **kwargs)


files.decode_files = decoding
extra = os.environ.get("RECOG_TEST_RANK1_ARGS", "").split() if distributed.rank() == 1 else []
sys.exit(main(sys.argv[1:] + extra))

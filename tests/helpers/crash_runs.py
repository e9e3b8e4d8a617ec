"""Train a short run once per kill point, each in a forked child that SIGKILLs itself at that write
point (``RECOG_FAULT_KILL_AT``); prints one line per point: ``k killed|finished``. Used by
test_reliability's crash-consistency test: forking after the imports keeps 30+ runs to seconds.

    python crash_runs.py PROJECT FIRST LAST
"""

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401 - what every child would import again: imported once, here
import sklearn.datasets  # noqa: E402,F401  # (pyflakes: imported for the children, on purpose)

import recog.api  # noqa: E402 - torch and recog imported once, before forking (no torch op has run yet)
import torch._dynamo  # noqa: E402,F401 - imported by torch.optim's first optimizer (2 s): once, here

project, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for k in range(first, last + 1):
    pid = os.fork()
    if pid == 0:
        os.environ["RECOG_FAULT_KILL_AT"] = str(k)
        code = 0
        try:
            recog.api.train(data="digits", model="seednet", epochs=3, batch_size=128, lr=0.05, schedule="constant",
                            deterministic=True, project=project, name=f"k{k}", verbose=False)
        except BaseException:  # noqa: BLE001 - any error is a failure the parent reports
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    state = "killed" if os.WIFSIGNALED(status) else ("finished" if os.WEXITSTATUS(status) == 0 else "failed")
    print(k, state, flush=True)

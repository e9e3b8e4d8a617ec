"""Page faults of four 16 MiB mallocs (written, freed), in a fresh process or after a reuse block:
run by test_speed in a subprocess, since malloc's settings are process-wide."""

import resource, sys, ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def faults(n=4, size=16 * 2**20):
    out = []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        p = libc.malloc(size); ctypes.memset(p, 1, size); libc.free(p)
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return out
if sys.argv[1] == "after":
    import torch
    from recog.memory import reuse_freed_memory
    with reuse_freed_memory():
        torch.ones(64 * 2**20)
print(" ".join(str(f) for f in faults()))

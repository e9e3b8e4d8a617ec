#!/bin/bash
# The GPU check of issue 11 ("fast by default, at any image size") on a lent device machine:
# defaults on CUDA (precision auto -> bf16, channels-last, the memory plan against free GPU memory)
# for the quick start and for real photos. The hymenoptera archive travels in .gpu3/ (git-ignored):
#   here:  mkdir -p .gpu3 && cp ../shared/data/hymenoptera.tar.gz .gpu3/
#   there: bash benchmarks/device_photos.sh      (run with carry [".gpu3"])
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/hymenoptera "$OUT"
tar xzf .gpu3/hymenoptera.tar.gz -C /tmp/hymenoptera
nvidia-smi -L
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
run() { echo "== recog train $*"; /usr/bin/time -f "wall %e s" python3 -m recog train --project /tmp/runs --progress lines "$@" 2>&1 | grep -v "^  "; }
run 2>&1 | tee "$OUT/quick_start.log"
run --data /tmp/hymenoptera 2>&1 | tee "$OUT/photos_default.log"
run --data /tmp/hymenoptera --time-budget 1m 2>&1 | tee "$OUT/photos_1m.log"
python3 - <<'PY' 2>&1 | tee "$OUT/memory.log"
import torch
from recog.engine.plan import activation_bytes, available_memory, plan_memory
from recog.models import create_model
dev = torch.device("cuda")
m = create_model("tv:resnet50", 10, 3, 224).to(dev).to(memory_format=torch.channels_last)
per = activation_bytes(m, 3, 224, "bf16", dev)
free = available_memory(dev)
p = plan_memory(per, 4096, None, free, "tv:resnet50 at 224 px")
print(f"resnet50 @224 bf16: {per / 2**20:.1f} MiB/image measured; free {free / 2**30:.1f} GiB; batch 4096 ->",
      p.describe(4096))
torch.cuda.reset_peak_memory_stats()
chunk = p.micro_batch or 4096
x = torch.randn(chunk, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
with torch.autocast("cuda", torch.bfloat16):
    m(x).float().logsumexp(1).mean().backward()
print(f"real peak of one micro-batch of {chunk}: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB "
      f"(planned {per * chunk * 1.5 / 2**30:.1f} GiB with the 1.5x overhead)")
PY

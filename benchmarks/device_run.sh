#!/bin/bash
# The GPU check of the speed issue, run on a lent device machine (see benchmarks/README.md).
# The lossless PNG copy (135 MB) is larger than one transfer allows, so it travels in parts
# (.gpu0/.gpu1/.gpu2, split from ../shared/data/cifar10-png.tar.gz, git-ignored) over successive
# calls on the same warm machine (each call carrying one part), gathered in /tmp/recog-data:
#   bash benchmarks/device_run.sh prepare     # here: split the archive into .gpu0 .gpu1 .gpu2
#   bash benchmarks/device_run.sh part N      # there: keep part N; part 0 also runs a CUDA smoke test
#   bash benchmarks/device_run.sh bench [benchmark options]   # there: join, check, run the benchmark
set -euo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p /tmp/recog-data "$OUT"
case "$1" in
prepare)
  for i in 0 1 2; do
    grep -qx "/.gpu$i/" .git/info/exclude || echo "/.gpu$i/" >> .git/info/exclude
    mkdir -p ".gpu$i"
  done
  split -b 46M -d -a 1 ../shared/data/cifar10-png.tar.gz /tmp/recog-data/png.part
  for i in 0 1 2; do mv /tmp/recog-data/png.part$i ".gpu$i/"; done
  ;;
part)
  cp ".gpu$2"/png.part"$2" /tmp/recog-data/
  ls -la /tmp/recog-data
  if [ "$2" = 0 ]; then
    nvidia-smi -L
    python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
    python3 - <<'PY'
import time, recog
t = time.perf_counter()
run = recog.train(data="digits", recipe="fast", epochs=3, device="cuda", project="/tmp/runs", verbose=False)
print("smoke: digits, fast recipe on CUDA:", run.config.precision, run.report["accuracy"], f"{time.perf_counter() - t:.1f}s")
PY
  fi
  ;;
bench)
  cd /tmp/recog-data && cat png.part0 png.part1 png.part2 > cifar10-png.tar.gz && rm png.part*
  echo "f7c26f7c29653bcf6e21827cf20913de57b36e550e460abefe247fa4adb1f5b7  cifar10-png.tar.gz" | sha256sum -c
  cd - >/dev/null
  export RECOG_SHARED_DATA=/tmp/recog-data
  shift
  python3 benchmarks/cifar10_speed.py --set device=cuda "$@" 2>&1 | tee "$OUT/cifar10_speed_gpu.log"
  ;;
esac

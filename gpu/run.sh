#!/usr/bin/env bash
# `repro batch` on a bare, offline GPU machine, from a plain copy of the repository: Python and
# torch are there, the rest of what the chapters need comes from a local wheel folder (WHEELS,
# default .whl; ../shared/tools/gpu-wheelhouse.sh fills it), the data from DATA (default .data:
# Fashion-MNIST's .gz files, or CIFAR-10's official batches or the JPEG copy's archive).
#
#   bash gpu/run.sh attacks --profile paper --model paper --dataset cifar10 \
#       --budget 520 --bench --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl} DATA=${DATA:-.data} SITE=${SITE:-/tmp/site}
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
export REPRO_DATA_DIR="$(cd "$DATA" && pwd)" REPRO_OFFLINE=1 PYTHONUNBUFFERED=1
for archive in "$DATA"/cifar10-jpeg*.tar.xz; do       # the copy, read once into image folders
    if [ -f "$archive" ]; then
        python3 -m reprolib.cli data cifar10 --from "$archive" --data-dir "$DATA"
    fi
done
python3 -c 'import torch; print("torch", torch.__version__, "·", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'
exec python3 -m reprolib.cli batch "$@"

#!/usr/bin/env bash
# The README's pictures: records ResNet-56 against its plain twin on the shared CIFAR-10 copy
# (same seed and batches) and exports the figures with `gradscope export`, plus a screenshot of
# the dashboard in headless Chromium, into docs/images/ (quantized PNGs, a few hundred KB).
#
#   bash scripts/make-gallery.sh            # record (about 30 minutes on 2 CPU cores), export
#   RUN=runs/gallery bash scripts/make-gallery.sh   # export from a pair already recorded
#
# Settings (environment): DATA (default ../shared/datasets/cifar10-jpg), STEPS (400),
# EVERY (5), OUT/NAME (runs/gallery), IMAGES (docs/images), PROBES (runs/probes: the probe
# files of the pair at initialization, kept out of the dashboard's folder).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-../shared/datasets/cifar10-jpg}
STEPS=${STEPS:-400}
EVERY=${EVERY:-5}
OUT=${OUT:-runs}
NAME=${NAME:-gallery}
RUN=${RUN:-$OUT/$NAME}
IMAGES=${IMAGES:-docs/images}
PROBES=${PROBES:-$OUT/probes}

if [ ! -f "$RUN/plain56.h5" ]; then
  if [ ! -d "$DATA" ]; then
    echo "make-gallery: no dataset at $DATA; set DATA to a CIFAR-10 copy" >&2
    exit 2
  fi
  gradscope record --model resnet56 --baseline plain56 --data "$DATA" --steps "$STEPS" \
    --every "$EVERY" --out "$(dirname "$RUN")" --name "$(basename "$RUN")" --quiet
fi
mkdir -p "$IMAGES"
PAIR=("$RUN/resnet56.h5" "$RUN/plain56.h5")
EXPORT=(gradscope export "${PAIR[@]}" --template paper --font-size 15)
FIRST=$(python3 -c "import gradscope, sys; print(int(gradscope.open_run(sys.argv[1]).steps[0]))" "$RUN/plain56.h5")

"${EXPORT[@]}" --figure flow --stat act_grad_norm --step "$FIRST" --width 900 --height 460 \
  --out "$IMAGES/flow-init.png"
"${EXPORT[@]}" --figure flow --stat act_grad_norm --width 900 --height 460 \
  --out "$IMAGES/flow-late.png"
"${EXPORT[@]}" --figure heatmap --stat act_grad_norm --width 1100 --out "$IMAGES/heatmaps.png"
"${EXPORT[@]}" --figure ratio --numerator plain56 --stat act_grad_norm --width 1150 \
  --out "$IMAGES/ratio.png"
"${EXPORT[@]}" --figure curves --width 1000 --height 420 --out "$IMAGES/curves.png"

# The pair before training: a probe at initialization (a Gaussian batch of 128), a few seconds.
gradscope probe resnet56 plain56 --out "$PROBES" > /dev/null
gradscope export "$PROBES/resnet56.h5" "$PROBES/plain56.h5" --template paper --font-size 15 \
  --figure spp --width 1400 --height 460 --out "$IMAGES/spp.png"

# The dashboard over the pair, rendered by Chromium once Dash has drawn every panel.
PORT=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
gradscope dashboard --runs "$RUN" --port "$PORT" > /dev/null 2>&1 &
SERVER=$!
trap 'kill $SERVER 2> /dev/null || true' EXIT
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$PORT/" > /dev/null && break
  sleep 1
done
CHROME=$(command -v chromium || command -v chromium-browser)
"$CHROME" --headless=new --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$(mktemp -d)" --window-size=1600,1500 --virtual-time-budget=60000 \
  --screenshot="$IMAGES/dashboard.png" "http://127.0.0.1:$PORT/" 2> /dev/null

# 256-colour PNGs (octree: keeps the small colour swatches), about a third of the bytes.
python3 - "$IMAGES" <<'PY'
import sys
from pathlib import Path

from PIL import Image

for path in sorted(Path(sys.argv[1]).glob("*.png")):
    image = Image.open(path).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    print(f"{path}: {image.width}x{image.height}, {path.stat().st_size / 1e3:.0f} kB")
PY

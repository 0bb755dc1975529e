#!/usr/bin/env bash
# Fresh machine -> labeled sample photos: set up .venv, install, label examples/photos into out/.
#   scripts/demo.sh                  real Grounding DINO (IDEA-Research/grounding-dino-tiny; needs
#                                    internet once, or AUTOLABEL_MODEL=/path/to/downloaded/model)
#   scripts/demo.sh --random-model   offline: a tiny randomly initialised Grounding DINO; the
#                                    pipeline and exports are real, the labels are meaningless
set -euo pipefail
cd "$(dirname "$0")/.."
# Prefect's temporary local server: no usage analytics (this may be an offline machine),
# and more than the default 20 s to start on a busy machine.
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-120}
scripts/setup.sh
MODEL=${AUTOLABEL_MODEL:-IDEA-Research/grounding-dino-tiny}
if [ "${1:-}" = "--random-model" ]; then
  MODEL=.cache/random-grounding-dino
  .venv/bin/python -m model_loaders.random_init "$MODEL" --size tiny >/dev/null
fi
status=0
.venv/bin/autolabel label examples/photos \
  --class "aluminum can: a shiny metal drink can" --class person --class cat \
  --model "$MODEL" --out out || status=$?
# Exit code 3 only says that some images were skipped (see out/report.md).
[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || exit "$status"
echo "done: out/coco/train/_annotations.coco.json, out/yolo/data.yaml, out/voc/, out/labels/, out/report.md"

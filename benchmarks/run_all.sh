#!/usr/bin/env bash
# Every benchmark, each writing its JSON (with machine and torch version) to results/benchmarks/.
# Usage: benchmarks/run_all.sh TRAINED_CHECKPOINT   (the decoding and trained-weight k-means runs need one)
set -euo pipefail
cd "$(dirname "$0")"
PY=../.venv/bin/python
OUT=../results/benchmarks
CKPT=${1:?give a trained model.pt}
mkdir -p "$OUT"
$PY train_throughput.py --out "$OUT/train_throughput.json"
$PY decode_speed.py "$CKPT" --out "$OUT/decode_speed.json"
$PY kmeans_speed.py --preset base --out "$OUT/kmeans_speed_base.json"
$PY kmeans_speed.py --preset base --per-layer --out "$OUT/kmeans_speed_base_per_layer.json"
$PY kmeans_speed.py --checkpoint "$CKPT" --out "$OUT/kmeans_speed_trained.json"
$PY bsflex_speed.py --out "$OUT/bsflex_speed.json"
$PY retrain_step.py --out "$OUT/retrain_step.json"

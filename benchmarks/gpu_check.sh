#!/usr/bin/env bash
# Issue #25: edgekit on a lent NVIDIA GPU (H200), in two calls on one warm machine.
#
#   stage1: install the carried wheels, build llama-cpp-python with CUDA from the trimmed sdist,
#           install edgekit, `edgekit device --json`, NVML readings, keep the model's first half.
#           Alone, it is the fallback check (build + device + NVML) when no model travels.
#   stage2: join the model's halves, verify its sha256 (edgekit models verify), then
#           profile --quick with every layer on the GPU, run --n 8 --json, parallel_sampling at
#           n = 1, 8, 32, plan from the GPU profile, plan vs measured, and a summary.
#
# Carried (ignored folders of the repo, named in `carry`):
#   .gpu1/llama_cpp_python-0.3.36-trim.tar.gz   .gpu1/whl/*.whl   .gpu1/model.part1     (call 1)
#   .gpu2/model.part2                                                                  (call 2)
# Everything lands in $OUT (at most 8 files each call). Works without a GPU for rehearsal:
#   GPU_CHECK_REHEARSE=1 OUT=/tmp/out bash benchmarks/gpu_check.sh stage2
set -uo pipefail
STAGE=${1:?usage: gpu_check.sh stage1|stage2}
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
exec > >(tee -a "$OUT/$STAGE.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
SITE=/tmp/site
PARTS=/tmp/ekparts
export EDGEKIT_HOME=${EDGEKIT_HOME:-/tmp/ekhome}
MODEL=smollm2-135m-instruct
REHEARSE=${GPU_CHECK_REHEARSE:-0}
T0=$(date +%s)
step() { echo; echo "=== [$(( $(date +%s) - T0 )) s] $*"; }
have() { command -v "$1" >/dev/null 2>&1; }

cuda_env() {  # cuBLAS: the CUDA toolkit's, else the pip wheel's (nvidia/cu13) beside torch
  if [ -f /usr/local/cuda/include/cublas_v2.h ]; then CUBLAS_DIR=""; return; fi
  CUBLAS_DIR=$($PY - <<'EOF'
import os, sys
for p in sys.path:
    for sub in ("nvidia/cu13", "nvidia/cublas", "nvidia/cu12"):
        d = os.path.join(p, sub)
        if os.path.isfile(os.path.join(d, "include", "cublas_v2.h")):
            print(d); raise SystemExit
EOF
)
}

if [ "$STAGE" = stage1 ]; then
  step "stage1: environment"
  { date -u; uname -a; nproc; free -g; $PY --version; have nvidia-smi && nvidia-smi;
    have nvidia-smi && nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm --format=csv;
    have nvcc && nvcc --version; cmake --version | head -1; ninja --version;
    $PY -m pip list 2>/dev/null | grep -iE "^(numpy|typer|rich|psutil|nvidia-ml-py|httpx|huggingface.hub|jinja2|scikit-build-core|cmake|ninja|setuptools|typing.extensions|attrs|click|pyyaml|tqdm|requests|nvidia-cublas|cuda-toolkit|torch) " ;
  } > "$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
  ls -la .gpu1 .gpu1/whl; du -sh .gpu1

  step "install carried wheels into $SITE"
  mkdir -p "$SITE"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .gpu1/whl/*.whl || exit 10
  export PYTHONPATH=$SITE

  step "build llama-cpp-python 0.3.36 with CUDA (trimmed sdist)"
  cuda_env
  LIBS=""
  if [ -n "$CUBLAS_DIR" ]; then
    echo "cuBLAS from $CUBLAS_DIR"
    CL=$(ls "$CUBLAS_DIR"/lib/libcublas.so* | head -1); CLT=$(ls "$CUBLAS_DIR"/lib/libcublasLt.so* | head -1)
    LIBS="-DCUDA_cublas_LIBRARY=$CL -DCUDA_cublasLt_LIBRARY=$CLT -DCMAKE_CUDA_FLAGS=-I$CUBLAS_DIR/include -DCMAKE_CXX_FLAGS=-I$CUBLAS_DIR/include"
    echo "export LD_LIBRARY_PATH=$CUBLAS_DIR/lib:\${LD_LIBRARY_PATH:-}" > /tmp/cuda_env.sh
  else
    echo "cuBLAS from /usr/local/cuda"; : > /tmp/cuda_env.sh
  fi
  # the driver library for CUDA VMM: link libcuda if it can be found, else build without VMM
  LIBCUDA=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so(\.1)? /{print $NF; exit}')
  [ -z "$LIBCUDA" ] && LIBCUDA=$(ls /usr/local/cuda/lib64/stubs/libcuda.so /usr/local/nvidia/lib64/libcuda.so* /usr/lib/x86_64-linux-gnu/libcuda.so* 2>/dev/null | head -1)
  if [ -n "$LIBCUDA" ]; then VMM="-DCUDA_cuda_driver_LIBRARY=$LIBCUDA"; else VMM="-DGGML_CUDA_NO_VMM=ON"; fi
  echo "libcuda: ${LIBCUDA:-none (GGML_CUDA_NO_VMM=ON)}"
  . /tmp/cuda_env.sh
  mkdir -p /tmp/llb && tar xzf .gpu1/llama_cpp_python-0.3.36-trim.tar.gz -C /tmp/llb || exit 11
  export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF -DGGML_CUDA_FA=OFF -DGGML_CUDA_NCCL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF $VMM $LIBS"
  export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) SKBUILD_BUILD_DIR=/tmp/llbuild  # a rerun on a warm machine resumes
  echo "CMAKE_ARGS=$CMAKE_ARGS"
  B0=$(date +%s)
  $PY -m pip wheel -v --no-index --no-deps --no-build-isolation --no-cache-dir -w /tmp/wh /tmp/llb/llama_cpp_python-0.3.36 > /tmp/build.log 2>&1
  RC=$?
  echo "build rc=$RC in $(( $(date +%s) - B0 )) s"; grep -E "CUDA|cuBLAS|error|Error" /tmp/build.log | grep -v "^ *--" | tail -25
  tail -c 12000000 /tmp/build.log | gzip > "$OUT/build.log.gz"
  [ $RC = 0 ] || exit 12
  $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" /tmp/wh/llama_cpp_python-*.whl || exit 13
  $PY -c "import llama_cpp as l; print('llama_cpp', l.__version__, 'gpu offload', l.llama_supports_gpu_offload()); print(l.llama_print_system_info().decode())" || exit 14

  step "install edgekit"
  if $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" .; then
    EK=("$SITE/bin/edgekit")
  else  # the repo itself on the path: the same code, run as python3 -m edgekit.cli.main
    echo "WARNING: pip could not install edgekit; running it from the repo"; export PYTHONPATH=$SITE:$REPO
    EK=($PY -m edgekit.cli.main)
  fi
  rm -rf build  # setuptools' build folder in the repo (ignored)
  $PY -m pip check 2>&1 | head -20 || true
  $PY -c "import edgekit, pydantic, jsonschema, gguf, tenacity; print('edgekit from', edgekit.__file__)" || exit 15

  step "edgekit device --json"
  "${EK[@]}" device --json > "$OUT/device.json"; echo "rc=$?"; head -c 3000 "$OUT/device.json"; echo

  step "NVML: GPU info, energy counter, power, memory; a 2 s idle window"
  $PY - > "$OUT/nvml.json" <<'EOF'
import json, time
from edgekit.power import best_meter
from edgekit.power.nvml import NvmlMeter, nvml_gpus
gpus, why = nvml_gpus()
m = NvmlMeter(0)
out = {"gpus": gpus, "why": why, "meter": m.describe(), "total_method": m.total_method,
       "has_energy_counter": m.has_energy_counter, "memory_used_mib": m.memory_used_mb(),
       "power_mw": m.read_power_mw() if m.available else None}
with m.window() as w:
    time.sleep(2.0)
out["idle_window"] = {"method": w.method, "energy_mj": w.energy_mj, "covered_s": w.covered_s,
                      "mean_power_mw": w.mean_power_mw, "complete": w.complete, "gap": w.gap_reason}
out["best_meter"] = best_meter().name
print(json.dumps(out, indent=1))
EOF
  cat "$OUT/nvml.json"

  step "keep the model's first half on this machine"
  mkdir -p "$PARTS" && cp .gpu1/model.part1 "$PARTS/" && ls -la "$PARTS"
  step "stage1 done in $(( $(date +%s) - T0 )) s"
  exit 0
fi

if [ "$STAGE" != stage2 ]; then echo "unknown stage $STAGE"; exit 2; fi

step "stage2: environment from stage1"
if [ -d "$SITE/llama_cpp" ]; then
  export PYTHONPATH=$SITE
  [ -f /tmp/cuda_env.sh ] && . /tmp/cuda_env.sh
  if [ -x "$SITE/bin/edgekit" ]; then EK=("$SITE/bin/edgekit"); else export PYTHONPATH=$SITE:$REPO; EK=($PY -m edgekit.cli.main); fi
elif [ "$REHEARSE" = 1 ]; then
  echo "REHEARSAL: using this machine's installed llama_cpp and PYTHONPATH=$REPO"
  export PYTHONPATH=$REPO
  EK=($PY -m edgekit.cli.main)
else
  echo "no $SITE/llama_cpp: stage1 did not run on this machine (was it given back between the calls?)"; exit 3
fi
$PY -c "import llama_cpp as l, edgekit; print('llama_cpp', l.__version__, 'gpu offload', l.llama_supports_gpu_offload(), '| edgekit', edgekit.__file__)"
S2=$OUT/s2; mkdir -p "$S2"
GPU_NAME=$(have nvidia-smi && nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
GPU_NAME=${GPU_NAME:-cpu-rehearsal}
have nvidia-smi && nvidia-smi > "$S2/nvidia-smi-before.txt"

step "assemble $MODEL from the two halves and verify it"
DEST=$("${EK[@]}" models path "$MODEL" 2>/dev/null | tail -1)
case "$DEST" in /*) ;; *) DEST="$EDGEKIT_HOME/models/$MODEL/SmolLM2-135M-Instruct.Q4_1.gguf";; esac
mkdir -p "$(dirname "$DEST")"
cat "$PARTS/model.part1" .gpu2/model.part2 > "$DEST.tmp" && mv "$DEST.tmp" "$DEST" || exit 20
ls -la "$DEST"
WANT=$($PY -c "from edgekit.models.catalog import CATALOG as C; print(C['$MODEL'].sha256)")
HAVE=$(sha256sum "$DEST" | cut -d' ' -f1)
echo "sha256 $HAVE (catalogue $WANT)"; [ "$HAVE" = "$WANT" ] || { echo "MODEL CORRUPT"; exit 21; }
"${EK[@]}" models verify "$MODEL" || exit 22   # edgekit's own full re-hash; writes the manifest
"${EK[@]}" models path "$MODEL"

step "edgekit device --json"
"${EK[@]}" device --json > "$S2/device.json"; echo "rc=$?"

step "edgekit profile --quick, every layer on the GPU, n up to 32"
"${EK[@]}" profile --model "$MODEL" --quick --gpu-layers -1 --ns "${NS:-1,2,3,4,5,6,7,8,16,32}" \
  --device-name "$GPU_NAME" -o "$S2/profile.json"; echo "profile rc=$?"

step "edgekit run --n 8 --json (GPU memory and energy of the whole process)"
$PY benchmarks/vram_peak.py --out "$S2/vram-run-n8.json" --label run-n8 -- "${EK[@]}" run \
  "A robot arm has 3 red and 4 blue blocks. How many blocks?" --model "$MODEL" --n 8 --seed 0 --gpu-layers -1 --json \
  > "$S2/run-n8.json"; echo "run rc=$?"

for N in 1 8 32; do
  step "parallel_sampling n=$N"
  P=edgekit,raw,sequential; [ "$N" = 32 ] && P=edgekit,raw  # sequential = n one-by-one: its rate is the n=1 rate
  $PY benchmarks/vram_peak.py --out "$S2/vram-parallel-n$N.json" --label parallel-n$N -- \
    $PY benchmarks/parallel_sampling.py --model "$MODEL" --ns "$N" --budget "${BUDGET:-128}" --reps "${REPS:-3}" \
    --gpu-layers -1 --paths "$P" --energy --json > "$S2/parallel-n$N.json"; echo "parallel n=$N rc=$?"
done

step "plan from the GPU profile + tables/object_counting-smollm2-cot.json, then plan vs measured"
for T in ${TARGETS:-1s 2s 5s 20s}; do
  "${EK[@]}" plan --profile "$S2/profile.json" --accuracy tables/object_counting-smollm2-cot.json \
    --latency-target "$T" --json -o "$S2/plan.json" > "$S2/plan-stdout.json" && { echo "planned at target $T"; break; }
done
$PY benchmarks/gpu_plan_check.py --plan "$S2/plan.json" --profile "$S2/profile.json" --questions "${QUESTIONS:-6}" \
  --gpu-layers -1 --edgekit "${EK[*]}" --out "$S2/plan-check.json"; echo "plan check rc=$?"

have nvidia-smi && nvidia-smi > "$S2/nvidia-smi-after.txt"
step "summary"
$PY - "$S2" > "$OUT/summary.json" <<'EOF'
import json, os, sys
d = sys.argv[1]
def load(name):
    p = os.path.join(d, name)
    try:
        return json.load(open(p))
    except Exception as e:  # noqa: BLE001
        return {"error": f"{name}: {e}"}
prof = load("profile.json"); s = {"gpu_layers": -1}
try:
    mp = prof["models"][0]; e = mp.get("energy") or {}
    def j(f): return None if not f or f.get("value") is None else f["value"] / 1e3
    s["energy_j_per_token"] = {"prefill": j(e.get("prefill_energy_per_token_mj")), "decode_n1": j(e.get("decode_energy_per_token_mj")),
                               "meter": e.get("meter"), "method": (e.get("decode_energy_per_token_mj") or {}).get("source"),
                               "idle_power_w": j(e.get("idle_power_mw"))}
    s["profile_peak_vram_mb"] = (mp.get("peak_vram_mb") or {}).get("value")
    s["profile_peak_vram_source"] = (mp.get("peak_vram_mb") or {}).get("source") or (mp.get("peak_vram_mb") or {}).get("note")
    s["profile_decode_tok_s"] = {f"n={p['n']},ctx={p['context_tokens']}": p["decode_tok_s"]["value"] for p in mp["decode"]}
    s["device"] = prof.get("device", {})
except Exception as ex:  # noqa: BLE001
    s["profile_error"] = repr(ex)
rates = {}
for n in (1, 8, 32):
    ps, v = load(f"parallel-n{n}.json"), load(f"vram-parallel-n{n}.json")
    row = (ps.get("rows") or [{}])[0]
    rates[n] = row.get("edgekit_tok_s")
    s[f"parallel_n{n}"] = {k: row.get(k) for k in ("edgekit_tok_s", "raw_tok_s", "sequential_tok_s", "edgekit_j_per_token",
                                                    "edgekit_j_per_token_above_idle", "energy_method")}
    s[f"parallel_n{n}"].update({"vram_peak_minus_before_mib": v.get("gpu_mem_peak_minus_before_mib"),
                                "process_vram_peak_mib": v.get("process_gpu_mem_peak_mib"), "n_ctx": ps.get("n_ctx")})
if rates.get(1) and rates.get(32):
    s["n32_over_n1"] = rates[32] / rates[1]; s["goal_n32_ge_8x_n1"] = s["n32_over_n1"] >= 8
v = load("vram-run-n8.json"); r = load("run-n8.json")
s["run_n8"] = {"total_s": (r.get("timings") or {}).get("total_s"), "decode_tok_s": (r.get("timings") or {}).get("decode_tok_s"),
               "answer": r.get("answer"), "vram_peak_minus_before_mib": v.get("gpu_mem_peak_minus_before_mib"),
               "process_vram_peak_mib": v.get("process_gpu_mem_peak_mib"), "process_energy_j": v.get("gpu_energy_j")}
c = load("plan-check.json")
s["plan_check"] = {k: c.get(k) for k in ("chosen", "target_s", "predicted_s", "measured_median_s", "median_rel_error",
                                          "within_15pct", "step_matched_median_abs_rel_error", "prediction_method")}
print(json.dumps(s, indent=1))
EOF
cat "$OUT/summary.json"
cp "$S2/profile.json" "$OUT/profile.json" 2>/dev/null
tar czf "$OUT/s2.tar.gz" -C "$OUT" s2 && rm -rf "$S2"
ls -la "$OUT"
step "stage2 done in $(( $(date +%s) - T0 )) s"

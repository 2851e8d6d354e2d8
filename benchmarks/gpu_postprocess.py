"""Turn what benchmarks/gpu_check.sh brought back into a device profile and a results file.

    python benchmarks/gpu_postprocess.py --stage1 DIR1 --stage2 DIR2 [--name nvidia-h200]

DIR1: the files of the stage1 call (env.txt, device.json, nvml.json, stage1.log, build.log.gz);
DIR2: those of the stage2 call (profile.json, summary.json, s2.tar.gz, stage2.log).
Writes profiles/<name>.json (the measured GPU profile, kind "measured", with the driver, CUDA,
compiler and build flags in its notes) and benchmarks/results/gpu_check_<name>.json (the
summary, the parallel-sampling rows, GPU memory per configuration, the plan check).
"""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

from _common import log, parser, run_main, write_json


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


def versions(text: str) -> dict:
    """Driver and CUDA versions from nvidia-smi's header; nvcc's release."""
    out = {}
    m = re.search(r"Driver Version:\s*([\d.]+)", text)
    if m:
        out["driver"] = m.group(1)
    m = re.search(r"CUDA Version:\s*([\d.]+)", text)
    if m:
        out["cuda_driver_api"] = m.group(1)
    m = re.search(r"Cuda compilation tools, release ([\d.]+), (V[\d.]+)", text)
    if m:
        out["nvcc"] = f"{m.group(1)} ({m.group(2)})"
    m = re.search(r"^CMAKE_ARGS=(.*)$", text, re.M)
    if m:
        out["cmake_args"] = re.sub(
            r"-D(CUDA_cublas\w*_LIBRARY|CMAKE_\w+_FLAGS|CUDA_cuda_driver_LIBRARY)=\S+ ?", "", m.group(1)
        ).strip()
    return out


def main(argv=None) -> int:
    ap = parser(__doc__, json_flag=False)
    ap.add_argument("--stage1", required=True)
    ap.add_argument("--stage2", required=True)
    ap.add_argument("--name", default="nvidia-h200", help="file name of the profile (profiles/<name>.json)")
    ap.add_argument("--profiles", default="profiles")
    ap.add_argument("--results", default="benchmarks/results")
    a = ap.parse_args(argv)
    from edgekit.schemas.profile import load_profile

    d1, d2 = Path(a.stage1), Path(a.stage2)
    s2 = {}
    if (d2 / "s2.tar.gz").exists():
        with tarfile.open(d2 / "s2.tar.gz") as t:
            for m in t.getmembers():
                if m.isfile():
                    s2[Path(m.name).name] = t.extractfile(m).read().decode(errors="replace")
    text = _read(d1 / "env.txt") + _read(d1 / "stage1.log") + s2.get("nvidia-smi-before.txt", "")
    v = versions(text)
    prof = load_profile(d2 / "profile.json")
    if prof.kind != "measured" or not prof.measured_models():
        log("the stage2 profile has no complete measured entry; not written")
        return 1
    mp = prof.measured_models()[0]
    gpu = prof.device.gpus[0].name if prof.device.gpus else "GPU"
    if v.get("driver") and prof.device.gpus and not prof.device.gpus[0].driver:
        prof.device.gpus[0].driver = v["driver"]
    prof.device.name = f"{gpu} (lent machine; every layer on the GPU)"
    summary = json.loads(_read(d2 / "summary.json") or "{}")
    prof.notes += [
        f"measured by benchmarks/gpu_check.sh (issue #25) on {prof.created}: NVIDIA driver {v.get('driver', '?')}, "
        f"CUDA {v.get('cuda_driver_api', '?')} (driver API, nvidia-smi), nvcc {v.get('nvcc', '?')}",
        f"llama-cpp-python {prof.device.llama_cpp_python or '0.3.36'} built there from a trimmed sdist with "
        f"{v.get('cmake_args', '?')}; GGML_CUDA_FA=OFF: no flash attention kernels (llama.cpp falls back to its "
        "plain attention), so f16 KV cache only",
        f"{mp.model.id}: gpu_layers={mp.gpu_layers} (all layers); energy from NVML "
        f"({(mp.energy.decode_energy_per_token_mj.source if mp.energy else None) or 'unavailable'}); peak GPU memory "
        f"{mp.peak_vram_mb.value if mp.peak_vram_mb else None} MB "
        f"({mp.peak_vram_mb.source if mp.peak_vram_mb else ''})",
    ]
    if summary.get("n32_over_n1") is not None:
        prof.notes.append(
            f"parallel_sampling, budget 128: edgekit aggregate decode n=32 / n=1 = {summary['n32_over_n1']:.2f}x"
        )
    pc = summary.get("plan_check") or {}
    if pc.get("median_rel_error") is not None:
        prof.notes.append(
            f"plan vs measured (edgekit run --plan, {pc.get('chosen')}): predicted {pc['predicted_s']:.3f} s, "
            f"measured median {pc['measured_median_s']:.3f} s, error {100 * pc['median_rel_error']:+.1f} %"
        )
    out = Path(a.profiles) / f"{a.name}.json"
    prof.save(out)
    res = {
        "versions": v,
        "summary": summary,
        "device_stage1": json.loads(_read(d1 / "device.json") or "{}"),
        "nvml_stage1": json.loads(_read(d1 / "nvml.json") or "{}"),
    }
    for k, txt in sorted(s2.items()):
        if k.endswith(".json") and k not in ("profile.json",):
            try:
                res[k[:-5]] = json.loads(txt)
            except ValueError:
                res[k[:-5]] = {"unparsed": txt[:2000]}
    rpath = Path(a.results) / f"gpu_check_{a.name}.json"
    write_json(rpath, res)
    print(f"wrote {out} and {rpath}")
    return 0


if __name__ == "__main__":
    run_main(main)

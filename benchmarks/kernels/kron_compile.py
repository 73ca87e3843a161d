"""Compile the Kronecker-sum Triton kernels for Hopper here, with no GPU: registers, spills, shared memory.

Triton compiles for a named target without a device, and its package carries NVIDIA's ``ptxas``, so
each kernel of ``kernels/kronsum_triton.py`` (``forward``; ``reduce``, which computes both factors'
gradients: strides, runtime values, tell them apart) is built for sm_90a at the 4096x4096 TTN shape (64-wide
halves, float32 in TF32) for every launch setting (rows per program x warps x pipeline stages) and
``ptxas -v`` reports its registers and spills. A setting that spills or needs more than 227 KB of shared
memory per program is left out of ``kron_gpu.py``'s sweep; the GPU then times only viable ones.

    .venv/bin/python benchmarks/kernels/kron_compile.py          # -> benchmarks/results/kernels-kron-compile.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
for _p in (HERE.parent, REPO):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness import check_output_dir, fail, positive_int, write_report  # noqa: E402

SHARED_LIMIT = 227 * 1024  # bytes of shared memory one program may use on H100/H200
SETTINGS = [(bb, w, st) for bb in (1, 2, 4) for w in (4, 8) for st in (1, 2, 3)]


MIXER = {"M": 64, "P": 64, "N": 8, "Q": 8, "BM": 64, "BP": 64, "BN": 16, "BQ": 16}  # an aTTN's mixer: Mᵀ ⊗ I


def compile_one(
    kernel: str,
    setting: tuple[int, int, int],
    width: int,
    bond: int,
    wide: bool = False,
    shape: dict | None = None,
    half: bool = False,
) -> dict[str, Any]:
    """Build one kernel for sm_90a and read ``ptxas -v``; ``wide``: the forward at the 25088x4096 TTN's
    factors (A 256x512, tiled 64 wide in 8 chunks; B 16x49); ``shape``: other extents and blocks
    (``MIXER``: the 4096² aTTN's mixer, 64x64 by the 8-wide identity); ``half``: float16 operands
    (the reduction's slots stay float32)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels import kronsum_triton

    fn = getattr(kronsum_triton, kernel)
    rows, warps, stages = setting
    const: dict[str, Any] = {k: width for k in ("M", "P", "N", "Q", "BM", "BP", "BN", "BQ")}
    const.update(BB=rows, PRECISION="ieee" if half else "tf32", F64=False)
    if kernel == "forward":
        const.update(R=bond, P_CHUNKS=1)
        if wide:
            const.update(M=256, P=512, N=16, Q=49, BM=64, BP=64, BN=16, BQ=64, P_CHUNKS=8)
    else:
        const["PER_SLICE"] = 8
    const.update(shape or {})
    operand = "*fp16" if half else "*fp32"
    signature = {name: (operand if i < 3 else "i32") for i, name in enumerate(fn.arg_names)}
    signature[fn.arg_names[3]] = operand if kernel == "forward" else "*fp32"  # y, or the reduction's slots
    signature.update({k: "constexpr" for k in const})
    src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
    ptx = compiled.asm["ptx"]
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run([str(ptxas), "-v", "--gpu-name", "sm_90a", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr  # fmt: skip
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", out)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    shared = compiled.metadata.shared
    row = {
        "registers": int(regs.group(1)) if regs else None,
        "spill_stores": int(spill.group(1)) if spill else None,
        "spill_loads": int(spill.group(2)) if spill else None,
        "shared": shared,
        "wgmma": ptx.count("wgmma.mma_async"),
    }
    row["viable"] = row["spill_stores"] == 0 and row["spill_loads"] == 0 and shared <= SHARED_LIMIT
    return row


def markdown(result: dict[str, Any]) -> str:
    # Results written before machine and date were recorded have neither: say so rather than guess.
    where = f"Machine: {result.get('machine', 'not recorded')}; {result.get('date', 'date not recorded')}. "
    lines = [
        "# Kronecker-sum Triton kernels compiled for Hopper (no GPU)",
        "",
        f"{where}Triton {result['triton']} for sm_90a, `ptxas -v` from Triton's package; 64-wide halves, float32 in "
        f"TF32, bond {result['bond']}. Produced by `benchmarks/kernels/kron_compile.py`. Setting: rows per "
        "program x warps x pipeline stages. Viable: no spills and at most 227 KB of shared memory; "
        "`kron_gpu.py` sweeps the viable settings on a GPU.",
        "",
        "| kernel | setting | registers | spill stores / loads (bytes) | shared (KB) | wgmma | viable |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for key, r in result["rows"].items():
        kernel, setting = key.split(" ")
        if "error" in r:
            lines.append(f"| {kernel} | {setting} | error: {r['error'][:80]} | | | | no |")
            continue
        lines.append(
            f"| {kernel} | {setting} | {r['registers']} | {r['spill_stores']} / {r['spill_loads']} | "
            f"{r['shared'] / 1024:.0f} | {r['wgmma']} | {'yes' if r['viable'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--bond", type=positive_int, default=16)
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        fail("unset TRITON_INTERPRET: this script compiles the kernels, it does not interpret them")
    check_output_dir(args.results)
    import triton
    from machine import describe

    rows: dict[str, Any] = {}
    for kernel in ("forward", "reduce"):
        for setting in SETTINGS:
            key = f"{kernel} {'x'.join(map(str, setting))}"
            try:
                rows[key] = compile_one(kernel, setting, 64, args.bond)
            except Exception as exc:
                rows[key] = {"error": " ".join(str(exc).split())[:300], "viable": False}
            print(key, json.dumps(rows[key]), flush=True)
    result = {
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "triton": triton.__version__,
        "bond": args.bond,
        "rows": rows,
    }
    write_report(args.results, "kernels-kron-compile", result, markdown)
    print(f"wrote {args.results / 'kernels-kron-compile.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A forward or backward kernel built for sm_90 without a GPU, and its loops' sizes in SASS.

Compiles the max sweep (``_adasplash_fwd_rowmax``), the threshold/output kernel
(``_adasplash_fwd_tau_out``, with the fold and the default config's four edges, five
sweeps and unrolled edges) or the backward's dQ or dK/dV kernel (``--kernel dq``,
``dkdv``: the default config's 64 x 64 blocks, four warps, two stages) as the benchmark
launches them (bf16, D = 128, causal, alpha = 1.5, GROUP = 1, unit strides and the other
integers divisible by 16: without those hints ptxas reported 183 registers for the max
sweep instead of 165, before session 27's trim took the hinted build to 134) with the
Triton release the GPU machine runs, installed beside the project's:

    python -m pip install -q --no-deps --target /tmp/tr36site triton==3.6.0
    PYTHONPATH=/tmp/tr36site python benchmarks/offline_sass.py --out /tmp/rowmax [--stages 2] [--pointers]
    PYTHONPATH=/tmp/tr36site python benchmarks/offline_sass.py --kernel tau_out --out /tmp/tau_out
    PYTHONPATH=/tmp/tr36site python benchmarks/offline_sass.py --kernel dkdv --out /tmp/dkdv

Writes <out>.cubin, .ptx, .ttgir and .sass (nvdisasm -c -gi, with source lines), prints
the registers and shared memory, and every loop (a backward branch) with its size in
instructions and the source lines that contribute most. In the threshold/output kernel
the first loops are, in order, a tile list's scan, the plain sweep, the sweep before the
fold (session 28: 607 instructions; 766 when it counted), another scan, and the folded
output pass (535); the same follow for the resumed sweeps and the plain output pass.
In the backward kernels the first loop is the step over a list's blocks (session 29:
421 instructions in the dQ kernel, 688 in the dK/dV kernel, the masked branch included).
"""

import argparse
import os
import re
import subprocess
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from adasplash_compile.kernels import backward, forward  # noqa: E402

FLOATS = {"alpha", "inv", "qk_scale", "tau_tol", "fold_tol", "u_exp", "scale"}
FORWARD_CONSTEXPRS = dict(HEAD_DIM=128, HAS_SEQLENS=False, IS_CAUSAL=True, ALPHA_MODE=1, BLOCK_M=64, BLOCK_N=64,
                          BLOCK_D=128, SCAN=forward._TILE_SCAN, DOT_PRECISION="tf32", USE_INT64=False)
BACKWARD_POINTERS = dict(q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", do_ptr="*bf16", tau_ptr="*fp32",
                         delta_ptr="*fp32", seqlens_ptr="*fp32")
BACKWARD_UNIT = {"stride_qd", "stride_kd", "stride_vd", "stride_dod", "stride_tm", "group_size"}
BACKWARD_CONSTEXPRS = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=128, TILE_M=64, TILE_N=64, LIST_ROWS=64, LIST_KEYS=64,
                           IS_CAUSAL=True, HAS_SEQLENS=False, ALPHA_MODE=1, DOT_MODE=0, EVEN_D=True)
KERNELS = {
    "rowmax": dict(
        fn=forward._adasplash_fwd_rowmax,
        pointers={"q_ptr": "*bf16", "k_ptr": "*bf16", "centre_ptr": "*bf16", "radius_ptr": "*fp32",
                  "m_ptr": "*fp32", "floor_ptr": "*fp32", "local_floor_ptr": "*fp32", "bound_ptr": "*fp32",
                  "rel_bound_ptr": "*fp32", "tile_list_ptr": "*i32", "seqlens_ptr": "*fp32"},
        unit={"stride_qd", "stride_kd", "stride_cd", "stride_rn", "stride_mm", "stride_ln", "GROUP"},
        constexprs=dict(FORWARD_CONSTEXPRS, CENTRE_CHUNK=forward._CENTRE_CHUNK, SCALE_AS_BITS=True),
        descriptors="KV_TMA",
        stages=3,
    ),
    "tau_out": dict(
        fn=forward._adasplash_fwd_tau_out,
        pointers={"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "out_ptr": "*bf16",
                  "u_value_mean_ptr": "*fp32", "m_ptr": "*fp32", "floor_ptr": "*fp32", "local_floor_ptr": "*fp32",
                  "tau_ptr": "*fp32", "bound_ptr": "*fp32", "rel_bound_ptr": "*fp32", "tile_max_ptr": "*fp32",
                  "tile_list_ptr": "*i32", "seqlens_ptr": "*fp32", "handled_ptr": "*i32"},
        unit={"stride_qd", "stride_kd", "stride_vd", "stride_od", "stride_ud", "stride_taum", "stride_tn",
              "stride_ln", "GROUP"},
        constexprs=dict(FORWARD_CONSTEXPRS, NBINS=4, MAX_SWEEPS=5, EDGE_UNROLL=4, FOLD=True, SKIP_HANDLED=True),
        descriptors="KV_TMA",
        stages=3,
    ),
    "dq": dict(
        fn=backward._adasplash_bwd_dq,
        pointers=dict(BACKWARD_POINTERS, u_value_mean_ptr="*fp32", dq_ptr="*bf16", kv_count_ptr="*i32",
                      kv_index_ptr="*i32"),
        unit=BACKWARD_UNIT | {"stride_dqd", "stride_ud"},
        constexprs=BACKWARD_CONSTEXPRS,
        descriptors="TMA",
        stages=2,
    ),
    "dkdv": dict(
        fn=backward._adasplash_bwd_dkdv,
        pointers=dict(BACKWARD_POINTERS, dk_ptr="*bf16", dv_ptr="*bf16", q_count_ptr="*i32", q_index_ptr="*i32"),
        unit=BACKWARD_UNIT | {"stride_dkd", "stride_dvd"},
        constexprs=BACKWARD_CONSTEXPRS,
        descriptors="TMA",
        stages=2,
    ),
}


def build(kernel: str, stages: int, descriptors: bool):
    spec = KERNELS[kernel]
    fn = spec["fn"]
    constexprs = {**spec["constexprs"], spec["descriptors"]: descriptors}
    signature, constants, divisible = {}, {}, []
    for name in fn.arg_names:
        if name in spec["pointers"]:
            signature[name] = spec["pointers"][name]
            divisible.append(name)
        elif name in constexprs or name in spec["unit"]:
            signature[name] = "constexpr"
            constants[name] = constexprs.get(name, 1)
        elif name in FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name in ("M", "N", "n_queries", "n_keys") or (name.startswith("stride") and name != "stride_bn"):
                divisible.append(name)
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    source = triton.compiler.ASTSource(fn, signature, constants, attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=stages))


def loops(sass: str) -> list:
    """(first address, last address, instructions, top source lines) of each backward branch."""
    labels, pending, instructions, line = {}, [], [], ""
    for text in sass.split("\n"):
        stripped = text.strip()
        if stripped.startswith("//##"):
            line = re.sub(r'File "[^"]*/', "", stripped)[5:].split(" inlined at")[0]
            continue
        label = re.match(r"^\.(L_x_\d+):", stripped)
        if label:
            pending.append(label.group(1))
            continue
        instruction = re.match(r"\s*/\*([0-9a-f]{4,5})\*/\s+(.*?);", text)
        if instruction:
            address = int(instruction.group(1), 16)
            for name in pending:
                labels[name] = address
            pending = []
            instructions.append((address, instruction.group(2), line))
    found = []
    for address, text, _ in instructions:
        target = re.search(r"BRA `\(\.(L_x_\d+)\)", text)
        if target and labels.get(target.group(1), address + 1) <= address:
            start = labels[target.group(1)]
            body = [src for a, _, src in instructions if start <= a <= address]
            top = sorted({src: body.count(src) for src in body}.items(), key=lambda item: -item[1])[:4]
            found.append((start, address, len(body), top))
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", choices=sorted(KERNELS), default="rowmax")
    parser.add_argument("--out", default="/tmp/rowmax")
    parser.add_argument("--stages", type=int, help="pipeline depth (default: as launched, 3 forward, 2 backward)")
    parser.add_argument("--pointers", action="store_true", help="pointer loads instead of descriptors")
    args = parser.parse_args()
    stages = args.stages or KERNELS[args.kernel]["stages"]
    kernel = build(args.kernel, stages, not args.pointers)
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    out = Path(args.out)
    out.with_suffix(".cubin").write_bytes(kernel.asm["cubin"])
    out.with_suffix(".ptx").write_text(kernel.asm["ptx"])
    out.with_suffix(".ttgir").write_text(kernel.asm["ttgir"])
    usage = subprocess.run([str(tools / "cuobjdump"), "--dump-resource-usage", str(out.with_suffix(".cubin"))],
                           capture_output=True, text=True, check=True).stdout
    sass = subprocess.run([str(tools / "nvdisasm"), "-c", "-gi", str(out.with_suffix(".cubin"))],
                          capture_output=True, text=True, check=True).stdout
    out.with_suffix(".sass").write_text(sass)
    print(re.search(r"REG:\d+", usage).group(0), "shared", kernel.metadata.shared)
    for start, end, size, top in loops(sass):
        print(f"loop {start:#x}..{end:#x}: {size} instructions;", "; ".join(f"{n} {src}" for src, n in top))


if __name__ == "__main__":
    main()

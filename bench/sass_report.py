"""Static profile of the hot CUDA kernels: the machine code of their inner loops, no GPU needed.

Each kernel is compiled for sm_90 the way numba does it (NVVM to PTX), assembled with ``ptxas``
and disassembled with ``nvdisasm``; the script then finds each kernel's innermost loops (a
backward branch whose body holds no other loop) that do float work: their instructions, global
and shared loads, float operations, and the instructions per float operation of the leanest
(the steady state; the others are unrolling remainders and edge paths).  A kernel whose
inner loop spends 20 instructions on address arithmetic and bounds checks per multiply-add is
issue-bound long before it is memory-bound; this is what to read before a GPU session, and
what a GPU session's timings then confirm or not.  It says nothing about latency, occupancy or
cache behaviour.

Needs numba-cuda and the CUDA compiler tools from PyPI (no GPU, no driver)::

    pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12 nvidia-cuda-nvdisasm
    python bench/sass_report.py                 # float32, int32 indices
    python bench/sass_report.py --dtype float64 --keep /tmp/sass   # and keep the .sass files
"""
import argparse
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _tool(name):
    """A CUDA tool from PATH or from the nvidia-* wheels' bin folders."""
    found = shutil.which(name)
    if found:
        return found
    import nvidia  # noqa: PLC0415  (namespace package of the nvidia-* wheels)

    for base in nvidia.__path__:
        for path in sorted(pathlib.Path(base).glob(f"*/bin/{name}")):
            return str(path)
    raise SystemExit(f"{name} not found: pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvdisasm")


def _kernels(fdt, idt):
    """(name, kernel, numba signature) of the kernels a training step spends its time in."""
    from numba import types  # noqa: PLC0415

    from sparsenet.kernels.cuda import conv, csr, ops  # noqa: PLC0415

    f, i = getattr(types, fdt), types.int64
    ivec = getattr(types, idt)[::1]
    vec, mat, anym, t4, b = f[::1], f[:, ::1], f[:, :], f[:, :, :, ::1], types.boolean
    return [
        ("csr_spmm", csr.csr_spmm, (ivec, ivec, ivec, b, vec, mat, vec, b, b, b, mat, mat)),
        ("csr_sddmm", csr.csr_sddmm, (ivec, ivec, mat, mat, vec)),
        ("csr_sddmm_bias", csr.csr_sddmm_bias, (ivec, ivec, mat, mat, vec, vec)),
        ("matmul", ops.matmul, (anym, anym, vec, b, b, b, mat, mat)),
        ("conv2d_fwd", conv.conv2d_fwd, (t4, mat, i, i, vec, b) + (i,) * 6 + (b, t4)),
        ("conv2d_grad_input", conv.conv2d_grad_input, (t4, mat) + (i,) * 8 + (b, t4, t4)),
        ("conv2d_grad_weight", conv.conv2d_grad_weight, (t4, t4) + (i,) * 9 + (f[:, :, ::1],)),
        ("sparse_conv2d_fwd", conv.sparse_conv2d_fwd, (t4, ivec, ivec, vec) + (i,) * 9 + (vec, t4)),
        ("sparse_conv2d_grad_input", conv.sparse_conv2d_grad_input, (t4, ivec, ivec, ivec, vec) + (i,) * 8 + (b, t4, t4)),
        ("sparse_conv2d_grad_weight", conv.sparse_conv2d_grad_weight, (t4, t4, types.int64[:, ::1], ivec) + (i,) * 9 + (vec,)),
    ]


_INSTRUCTION = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA\b.*`\((\.L_x_\d+)\)")


def inner_loops(sass):
    """Innermost loops of a disassembly: lists of instruction texts."""
    code, labels = [], {}
    for line in sass.splitlines():
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = len(code)
            continue
        instruction = _INSTRUCTION.match(line)
        if instruction:
            code.append(instruction.group(1))
    spans = []
    for end, text in enumerate(code):
        branch = _BRANCH.search(text)
        if branch and labels.get(branch.group(1), end + 1) <= end:
            spans.append((labels[branch.group(1)], end))
    innermost = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1] for o in spans)]
    return [code[a:e + 1] for a, e in innermost]


def _count(loop, pattern):
    return sum(1 for text in loop if re.search(pattern, text))


def profile(fn, sig, workdir, name):
    from numba import cuda  # noqa: PLC0415

    ptx_path = workdir / f"{name}.ptx"
    bounds = getattr(fn, "targetoptions", {}).get("launch_bounds")  # the kernel's register cap, if any
    ptx_path.write_text(cuda.compile_ptx(fn.py_func, sig, cc=(9, 0), launch_bounds=bounds)[0])
    cubin = workdir / f"{name}.cubin"
    assembled = subprocess.run([_tool("ptxas"), "-arch=sm_90", "-O3", "-v", str(ptx_path), "-o", str(cubin)],
                               capture_output=True, text=True, check=True)
    registers = re.search(r"Used (\d+) registers", assembled.stderr)
    spilled = re.search(r"(\d+) bytes spill stores", assembled.stderr)
    sass = subprocess.run([_tool("nvdisasm"), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
    (workdir / f"{name}.sass").write_text(sass)
    fop = r"\b[FD](?:FMA|ADD|MUL|MNMX)\b"
    loops = sorted(inner_loops(sass), key=lambda lp: (-_count(lp, fop), len(lp)))
    return {
        "registers": int(registers.group(1)) if registers else None,
        "spill_bytes": int(spilled.group(1)) if spilled else None,
        # (instructions, global loads, shared loads, float ops) of each loop doing float work
        "loops": [(len(lp), _count(lp, r"\bLDG?\.E"), _count(lp, r"\bLDS\b"), _count(lp, fop))
                  for lp in loops if _count(lp, fop)],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--index", default="int32", choices=["int32", "int64"])
    parser.add_argument("--keep", type=pathlib.Path, help="folder to keep the .ptx/.sass files in")
    parser.add_argument("-k", dest="only", help="only kernels whose name contains this")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or pathlib.Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"innermost loops doing float work, sm_90, {args.dtype}, {args.index} indices\n")
        print("| kernel | registers (spilled bytes) | inner loops: instructions / float ops (global loads, shared loads) | "
              "best instructions per float op |")
        print("|---|---|---|---|")
        for name, fn, sig in _kernels(args.dtype, args.index):
            if args.only and args.only not in name:
                continue
            r = profile(fn, sig, workdir, name)
            loops = ", ".join(f"{n}/{f} ({g}, {s})" for n, g, s, f in r["loops"])
            best = min((n / f for n, _, _, f in r["loops"]), default=None)
            print(f"| {name} | {r['registers']} ({r['spill_bytes']}) | {loops} | {'' if best is None else f'{best:.1f}'} |")

if __name__ == "__main__":
    main()

"""The decode kernels through Triton's CUDA front end (Python AST to TTIR) on a CPU machine: the interpreter runs
a kernel's Python as Python, so it accepts what the compiler refuses (e.g. a variable that one branch makes a
scalar and another a block). Compiling for sm_90 needs no GPU; a kernel that fails here fails on every GPU.

The compiles run in a child process: the interpreter, once it has run in this one, leaves Triton's language
patched for itself."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
POINTERS_FP32 = {"m_ptr", "l_ptr", "acc_ptr", "cos_ptr", "sin_ptr"}
TILES = {"lane_n16_w4_s3": (16, 4, 3, False), "mma_n16_w4_s3": (16, 4, 3, True), "mma_n64_w8_s2": (64, 8, 2, True),
         "mma_n64_w4_s2_tma": (64, 4, 2, True, True)}
CASES = [{"tile": t, "direct": direct, "gelu": direct, "head_dim": d}
         for t in TILES for direct in (False, True) for d in (256, 80)]


def to_ttir(kernel, types: dict[str, str], constexprs: dict[str, object], num_warps: int = 4) -> str:
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    names = list(inspect.signature(kernel.fn).parameters)
    signature = {n: "constexpr" if n in constexprs else types.get(n, "i32") for n in names}
    source = ASTSource(fn=kernel.compiled, signature=signature,
                       constexprs={(names.index(k),): v for k, v in constexprs.items()})
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    options = backend.parse_options({"num_warps": num_warps})
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    return str(source.make_ir(target, options, backend.get_codegen_implementation(options),
                              backend.get_module_map(), context))


def pointer_rule(name: str) -> str:
    """The decode kernels' argument types, by name: fp32 partials and tables, int32 counters, fp16 tensors."""
    if name in POINTERS_FP32 or name == "part_ptr":
        return "*fp32"
    if name.endswith("count_ptr"):
        return "*i32"
    if name == "pos_ptr":
        return "*i64"
    if name.endswith("_ptr"):
        return "*fp16"
    return "fp32" if name in ("eps", "scale_log2") else "i32"


GEMV_BASE = dict(BLOCK_N=16, BLOCK_K=256, SPLIT=1, EVEN_K=True, STAGES=4, GELU=False, HAS_BIAS=False, PDL=False,
                 LINE=64, PREFETCH=0, LATE=False, NORMS=False, N_BIASES=0, TWO_NORMS=False, BLOCK=2048)
DOT_BASE = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=256, SPLIT=1, EVEN_K=True, STAGES=3, PDL=False, LINE=64, PREFETCH=0,
                LATE=False, SWAP=False, TMA=False)
GEMM_CASES = [
    {"kernel": "gemv", "name": "gemv", "constexprs": GEMV_BASE},
    {"kernel": "gemv", "name": "gemv+gelu", "constexprs": {**GEMV_BASE, "GELU": True, "HAS_BIAS": True}},
    {"kernel": "gemv", "name": "gemv-split4", "constexprs": {**GEMV_BASE, "BLOCK_N": 8, "BLOCK_K": 512, "SPLIT": 4}},
    {"kernel": "gemv", "name": "gemv+norms", "constexprs": {**GEMV_BASE, "BLOCK_N": 8, "BLOCK_K": 512, "NORMS": True,
                                                            "N_BIASES": 2, "TWO_NORMS": True}},
    {"kernel": "gemv", "name": "gemv-split2+norms+pdl", "constexprs": {**GEMV_BASE, "SPLIT": 2, "NORMS": True,
                                                                       "N_BIASES": 1, "PDL": True, "PREFETCH": 4}},
    {"kernel": "dot", "name": "dot", "constexprs": DOT_BASE},
    {"kernel": "dot", "name": "dot-split4", "constexprs": {**DOT_BASE, "BLOCK_N": 32, "SPLIT": 4, "EVEN_K": False,
                                                             "STAGES": 4}},
    {"kernel": "dot", "name": "wdot-split2", "constexprs": {**DOT_BASE, "BLOCK_K": 128, "SPLIT": 2, "STAGES": 4,
                                                              "SWAP": True}},
    {"kernel": "dot", "name": "wdot-tma", "constexprs": {**DOT_BASE, "BLOCK_N": 128, "BLOCK_K": 128, "EVEN_K": False,
                                                           "STAGES": 4, "SWAP": True, "TMA": True}},
    {"kernel": "dot", "name": "dot-tma-split4", "constexprs": {**DOT_BASE, "BLOCK_N": 32, "SPLIT": 4, "STAGES": 4,
                                                                 "TMA": True}},
]


def gemm_ttir(case: dict) -> str:
    from models import decode_gemm as G

    kernel = G.GEMV if case["kernel"] == "gemv" else G.DOT
    names = list(inspect.signature(kernel.fn).parameters)
    return to_ttir(kernel, {n: pointer_rule(n) for n in names}, case["constexprs"])


def attention_ttir(case: dict) -> str:
    from models import decode_kernels as K

    block_n, warps, stages, mma, *tma = TILES[case["tile"]]
    d = case["head_dim"]
    constexprs = dict(HEAD_DIM=d, HALF=max(1, d // 8), BLOCK_N=block_n, BLOCK_D=1 << max(4, (d - 1).bit_length()),
                      HAS_BIAS=True, DIRECT=case["direct"], STAGES=stages, BLOCK_S=64, HAS_GELU=case["gelu"],
                      HAS_UP_BIAS=case["gelu"], GELU_BLOCK=1024, PDL=False, LATE=False, MMA=mma,
                      INPUT_PRECISION="tf32", TMA=bool(tma))
    names = inspect.signature(K.DECODE_ATTENTION.fn).parameters
    return to_ttir(K.DECODE_ATTENTION, {n: pointer_rule(n) for n in names}, constexprs, warps)


def clash_ttir() -> str:
    """A variable that is a block before an if and a scalar inside it: the clash that stopped the first
    tensor-core loop on the H200 (the interpreter had run it)."""
    import triton.language as tl

    from models.invariant.backend import Kernel

    def clash(x_ptr, n, BLOCK: tl.constexpr):
        first = tl.arange(0, BLOCK) == 0
        if n > 1:
            first = n
        tl.store(x_ptr + tl.arange(0, BLOCK), first.to(tl.float32))

    return to_ttir(Kernel(clash), {"x_ptr": "*fp32"}, {"BLOCK": 16})


def compile_in_child(cases: list[dict]) -> list[dict]:
    done = subprocess.run([sys.executable, __file__, json.dumps(cases)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def compiled():
    pytest.importorskip("triton")
    return compile_in_child(CASES + [{"clash": True}])


@pytest.mark.parametrize("index", range(len(CASES)),
                         ids=[f"{c['tile']}-{'direct+gelu' if c['direct'] else 'split'}-d{c['head_dim']}" for c in CASES])
def test_the_attention_kernel_compiles_for_cuda_in_every_variant(compiled, index):
    result = compiled[index]
    assert result["error"] is None, result["error"]
    assert result["dot"] == TILES[CASES[index]["tile"]][3]  # tt.dot in the tensor-core loop, and only there


@pytest.fixture(scope="module")
def compiled_gemms():
    pytest.importorskip("triton")
    return compile_in_child(GEMM_CASES)


@pytest.mark.parametrize("index", range(len(GEMM_CASES)), ids=[c["name"] for c in GEMM_CASES])
def test_the_decode_gemm_kernels_compile_for_cuda_in_every_epilogue(compiled_gemms, index):
    result = compiled_gemms[index]
    assert result["error"] is None, result["error"]
    assert result["dot"] == (GEMM_CASES[index]["kernel"] == "dot")  # the gemv kernel uses no tensor cores


def test_a_kernel_the_interpreter_accepts_but_the_compiler_refuses_fails_here(compiled):
    error = compiled[-1]["error"]
    assert error is not None and "first" in error and "CompilationError" in error


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    results = []
    for case in json.loads(sys.argv[1]):
        try:
            ttir = (clash_ttir() if case.get("clash") else gemm_ttir(case) if "kernel" in case
                    else attention_ttir(case))
            results.append({"error": None, "dot": "tt.dot" in ttir})
        except Exception as e:  # noqa: BLE001 - reported to the test, which names it
            text = str(e)
            cause = e.__cause__
            while cause is not None:
                text += f"\n{type(cause).__name__}: {cause}"
                cause = cause.__cause__
            results.append({"error": f"{type(e).__name__}: {text[-1500:]}", "dot": None})
    print(json.dumps(results))

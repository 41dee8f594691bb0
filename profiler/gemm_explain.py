"""Why each GEMM runs at the speed it does, read from the trace: tiles, CTAs, waves (paper Section III-B).

For every (pass, component, role) GEMM, and every fused-attention row, of an attributed trace:

1. the kernel: the GEMM (or flash) kernel that takes most of the row's time; its launch grid, block,
   registers and shared memory (as the trace records them) and the tile its name announces
   (profiler/kernel_names.py);
2. the GEMM's shape (batch, m, n, k): from the launching aten op's recorded input dims, else from the
   config's Table II shape (models.gemms) for that pass and role;
3. the tiles the output needs: batch x ceil(n / tile_M) x ceil(m / tile_N) for a cuBLAS kernel (PyTorch
   calls cuBLAS column-major: the kernel's M runs along the output's columns), batch x heads x
   ceil(s / block) for flash; tile quantization = useful / computed area of those tiles (VI-B);
4. resident CTAs per SM, from the launch's threads, registers and shared memory against the SM's limits
   (the trace's deviceProperties), so a wave is SMs x resident CTAs, not the paper's one CTA per SM when
   two fit (flash forward often does);
5. waves = work / wave slots and the last wave's fill. The work is the grid's CTAs, except for a
   persistent kernel: a grid smaller than the tiles and no larger than one wave, whose CTAs loop over the
   tiles (Hopper's nvjet kernels launch one CTA per SM). There the launch-wave model does not apply; the
   tiles-per-CTA figure is shown, with the fill a static round-robin schedule's last round would have.
   Split-K (grid z > 1 that is not the batch, more CTAs than tiles, or `splitK` in the name) is noted.
   A causal flash kernel's CTAs do unequal work (a query block visits only the key blocks up to it), so
   its waves count launches, not equal shares of the work;
6. with the GPU's measured peak and copy bandwidth, the GEMM's arithmetic intensity (FLOPs per byte of A, B
   and C, each moved once) and its roofline, min(peak, intensity x bandwidth): a GEMM below the ridge
   (the attention BMMs at small h/a, paper Section VI-B) is bounded by memory, not by its tiles.

`why` says it in one line, e.g. "256x128 tiles: 8 x 16 = 128 tiles on 132 SMs = 0.97 waves, last wave 97%
full". Pure: activities in, DataFrame out; the SM count and SM limits come from the trace or the run's
environment, never from a constant here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from models import DTYPE_BYTES
from models.gemms import GEMM_COMPONENTS, layer_gemms

from .attribution import FUSED_ATTENTION
from .gemm_detect import kernel_class
from .kernel_names import KernelTile, parse_kernel_name

# the most resident blocks per SM, by compute capability (CUDA C Programming Guide, "Technical
# Specifications per Compute Capability"); the trace's deviceProperties carries every other limit
MAX_BLOCKS_PER_SM = {(7, 0): 32, (7, 5): 16, (8, 0): 32, (8, 6): 16, (8, 7): 16, (8, 9): 24, (9, 0): 32,
                     (10, 0): 32, (12, 0): 32}
REGISTER_ALLOCATION_UNIT = 256  # registers are handed out per warp in units of 256
SHARED_MEMORY_RESERVED_PER_BLOCK = 1024  # bytes the runtime keeps per resident block (sm_80 and later)
FLASH_MAIN_KERNELS = ("flash_fwd_kernel", "flash_fwd_splitkv_kernel", "flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel",
                      "flash_bwd_dq_dk_dv_loop_kernel")
SHAPE_OPS_2D = ("aten::mm",)
SHAPE_OPS_ADD = ("aten::addmm", "aten::_addmm_activation", "aten::baddbmm")
# fused-attention ops whose first input is q as (batch, queries, heads, head dim)
ATTENTION_BSHD_OPS = ("aten::_flash_attention_forward", "aten::_flash_attention_backward",
                      "aten::_efficient_attention_forward", "aten::_efficient_attention_backward")


def sm_limits(device_properties: dict | None) -> dict:
    """The SM's limits from a trace's deviceProperties (profiler.trace.device_properties)."""
    props = device_properties or {}
    cc = (props.get("computeMajor"), props.get("computeMinor"))
    return {"sms": props.get("numSms"), "regs_per_sm": props.get("regsPerMultiprocessor"),
            "shared_memory_per_sm": props.get("sharedMemPerMultiprocessor"),
            "threads_per_sm": props.get("maxThreadsPerMultiprocessor"), "warp_size": props.get("warpSize") or 32,
            "blocks_per_sm": MAX_BLOCKS_PER_SM.get(cc)}


def _number(value) -> float | None:
    """A launch field as the trace has it, None when absent (a memset has no registers: NaN)."""
    try:
        return None if value is None or math.isnan(float(value)) else float(value)
    except (TypeError, ValueError):
        return None


def resident_ctas_per_sm(threads: int | None, registers: float | None, shared_memory: float | None,
                         limits: dict) -> int | None:
    """How many CTAs of this launch fit on one SM at once (the theoretical occupancy in blocks)."""
    registers, shared_memory = _number(registers), _number(shared_memory)
    if not threads or not limits.get("threads_per_sm"):
        return None
    warp = limits.get("warp_size") or 32
    warps = math.ceil(threads / warp)
    bounds = [limits["threads_per_sm"] // (warps * warp)]
    if limits.get("blocks_per_sm"):
        bounds.append(limits["blocks_per_sm"])
    if registers and limits.get("regs_per_sm"):
        per_warp = math.ceil(registers * warp / REGISTER_ALLOCATION_UNIT) * REGISTER_ALLOCATION_UNIT
        bounds.append(limits["regs_per_sm"] // (per_warp * warps))
    if shared_memory and limits.get("shared_memory_per_sm"):
        bounds.append(limits["shared_memory_per_sm"] // (int(shared_memory) + SHARED_MEMORY_RESERVED_PER_BLOCK))
    return max(0, min(bounds))


def gemm_shape(op: str, dims) -> tuple[int, int, int, int] | None:
    """(batch, m, n, k) of a GEMM aten op from its recorded input dims; for a flash op (batch = b x heads,
    m = queries, n = head dim, k = keys) from q's (b, s, heads, d)."""
    try:
        if op in SHAPE_OPS_2D or op == "aten::bmm":
            a, b = dims[0], dims[1]
        elif op in SHAPE_OPS_ADD:
            a, b = dims[1], dims[2]
        elif op in ATTENTION_BSHD_OPS:
            bq, s, heads, d = dims[0]
            return bq * heads, s, d, s
        else:
            return None
        batch = a[0] if len(a) == 3 else 1
        return int(batch), int(a[-2]), int(b[-1]), int(a[-1])
    except (TypeError, IndexError, ValueError):
        return None


def config_shape(cfg, component: str, role: str) -> tuple[int, int, int, int] | None:
    """(batch, m, n, k) of one GEMM row from the config's Table II shape: the forward GEMM, or for a
    backward row the product its role computes: dgrad / dgrad_lhs m x k over n; a linear layer's wgrad
    (PyTorch's dOut^T x) n x k over m; a BMM's dgrad_rhs (A^T dOut) k x n over m."""
    if cfg is None:
        return None
    if component in FUSED_ATTENTION:
        return cfg.micro_batch_size * cfg.heads_per_gpu, cfg.seq_length, cfg.head_dim, cfg.seq_length
    fwd = {g.component: g for g in layer_gemms(cfg.replace(attention="eager"), include_logits=True)}.get(component)
    if fwd is None:
        return None
    if role in ("", "fprop"):
        return fwd.batch, fwd.m, fwd.n, fwd.k
    if role in ("dgrad", "dgrad_lhs"):
        return fwd.batch, fwd.m, fwd.k, fwd.n
    if role == "wgrad":
        return fwd.batch, fwd.n, fwd.k, fwd.m
    return fwd.batch, fwd.k, fwd.n, fwd.m  # dgrad_rhs


def _tiles(tile: KernelTile, shape) -> tuple[int | None, float | None, str]:
    """Tiles the output needs, tile-quantization efficiency, and the count spelled out."""
    if not tile.known or shape is None:
        return None, None, ""
    batch, m, n, _ = shape
    if tile.family == "flash":
        # forward: one CTA per block of queries; backward's main loop: one per block of keys. A head dim
        # the kernel has no instance for runs padded to the next one it has (40 -> 64, 80 -> 96)
        forward = bool(tile.flash_kernel and "fwd" in tile.flash_kernel)
        along, rows = (tile.tile_m, m) if forward else (tile.tile_n, shape[3])
        blocks = math.ceil(rows / along)
        padding = n / tile.head_dim if tile.head_dim and tile.head_dim >= n else 1.0
        return batch * blocks, rows / (blocks * along) * padding, f"{blocks} x {batch}"
    first, second = (n, m) if tile.column_major else (m, n)
    a, b = math.ceil(first / tile.tile_m), math.ceil(second / tile.tile_n)
    spelled = f"{a} x {b}" + (f" x {batch}" if batch > 1 else "")
    return batch * a * b, (m * n) / (a * tile.tile_m * b * tile.tile_n), spelled


def _grid(value) -> tuple[int, int, int] | None:
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 3:
        return tuple(int(v) for v in value)
    return None


def _main_kernel(rows: pd.DataFrame) -> str | None:
    classes = rows["name"].map(kernel_class)
    candidates = rows[classes.isin(("gemm", "attention"))]
    if candidates.empty:
        return None
    flash = candidates[candidates["name"].str.contains("|".join(FLASH_MAIN_KERNELS))]
    pool = flash if not flash.empty else candidates
    return pool.groupby("name")["dur_us"].sum().idxmax()


def _why(r: dict) -> str:
    text = _why_tiles(r)
    if r.get("memory_bound"):
        text += (f"; memory-bound: {r['intensity_flop_per_byte']:.0f} FLOP/byte, HBM allows "
                 f"{r['roofline_tflops']:.0f} TFLOP/s")
    return text


def _why_tiles(r: dict) -> str:
    sms, per_sm = r["sms"], r["ctas_per_sm"]
    on = f"on {sms} SMs" + (f" x {per_sm} resident CTAs" if per_sm and per_sm > 1 else "")
    tile = f"{r['tile']} tiles" if r["tile"] != "unknown" else "tile unknown"
    if r["wave_model"] == "persistent":
        text = (f"persistent kernel: {r['ctas']} CTAs loop over {r['tiles']} {r['tile']} tiles "
                f"({r['tiles'] / r['ctas']:.2f} each); wave quantization does not apply "
                f"(a static schedule's last round would be {r['last_wave_fill_pct']:.0f}% full, "
                f"{r['wave_efficiency_pct']:.0f}% of SM-time used)")
    elif r["wave_model"] == "grid":
        text = (f"{tile} (kernel name not parsed): {r['ctas']} CTAs {on} = {r['waves']:.2f} waves, "
                f"last wave {r['last_wave_fill_pct']:.0f}% full")
    else:
        text = (f"{tile}: {r['tiles_spelled']} = {r['tiles']} tiles {on} = {r['waves']:.2f} waves, "
                f"last wave {r['last_wave_fill_pct']:.0f}% full")
    if r["tile_efficiency_pct"] is not None and r["tile_efficiency_pct"] < 99.95:
        padded = r["family"] == "flash" and r["kernel_head_dim"] and r["n"] and r["kernel_head_dim"] > r["n"]
        why = f"head dim {r['n']} runs as {r['kernel_head_dim']}" if padded else "tile quantization"
        text += f"; tiles {r['tile_efficiency_pct']:.0f}% used ({why})"
    if r["split_k"] and r["split_k"] > 1:
        text += f"; split-K x{r['split_k']}"
    elif r["split_k_in_name"]:
        text += "; split-K (named)"
    return text


def _roofline(shape, element: int, peak_tflops, copy_tbps) -> dict:
    """A GEMM's arithmetic intensity (A, B and C each moved once) and its roofline on this GPU."""
    if shape is None:
        return {"intensity_flop_per_byte": None, "roofline_tflops": None, "memory_bound": None}
    batch, m, n, k = shape
    intensity = 2 * m * n * k / (element * (m * k + k * n + m * n))
    if not peak_tflops or not copy_tbps:
        return {"intensity_flop_per_byte": intensity, "roofline_tflops": None, "memory_bound": None}
    bound = intensity * copy_tbps  # FLOP/byte x TB/s = TFLOP/s
    return {"intensity_flop_per_byte": intensity, "roofline_tflops": min(peak_tflops, bound),
            "memory_bound": bound < peak_tflops}


def explain_gemms(activities: pd.DataFrame, *, sms: int, limits: dict | None = None,
                  components: pd.DataFrame | None = None, cfg=None, peak_tflops: float | None = None,
                  copy_tbps: float | None = None, bytes_per_element: int | None = None) -> pd.DataFrame:
    """One row per (pass, component, role) GEMM or fused attention: kernel, shape, tile, grid, resident CTAs,
    tiles, waves, last-wave fill, tile quantization, persistent / split-K, time, TFLOP/s and `why`.

    `sms`: the GPU's SM count (trace deviceProperties numSms, or the run's environment sm_count). `limits`:
    sm_limits(deviceProperties), for resident CTAs per SM (without it one CTA per SM, the paper's model).
    `components`: the components table (pass, component, role, flops[, time_us]); its executed FLOPs give
    TFLOP/s, else a GEMM's own 2 x batch x m x n x k is used. `cfg`: shapes for rows whose op has no dims,
    and the element size. `peak_tflops` / `copy_tbps` (the run's measured GEMM peak and copy bandwidth):
    each GEMM's roofline and whether it is memory-bound; without them those columns are empty."""
    if bytes_per_element is None:
        bytes_per_element = DTYPE_BYTES.get(getattr(cfg, "dtype", None), 2)
    limits = {**(limits or {}), "sms": sms}
    steps = max(1, activities["step"].nunique())
    keep = activities["kind"].eq("gemm") | activities["component"].isin(FUSED_ATTENTION)
    rows = []
    for (pas, component, role), group in activities[keep].groupby(["pass", "component", "role"], sort=False):
        main = _main_kernel(group)
        if main is None:
            continue
        k_rows = group[group["name"] == main]
        first = k_rows.iloc[0]
        tile = parse_kernel_name(main)
        shape, source = gemm_shape(first["op"], first["op_dims"]), "op_dims"
        if shape is None:
            shape, source = config_shape(cfg, component, role), "config"
        if shape is None:
            source = ""
        grids = k_rows["grid"].map(_grid).dropna()
        grid = grids.mode().iloc[0] if len(grids) else None
        ctas = int(np.prod(grid)) if grid else None
        block = _grid(first["block"])
        threads = int(np.prod(block)) if block else None
        per_sm = resident_ctas_per_sm(threads, first.get("registers"), first.get("shared_memory"), limits) \
            if limits.get("threads_per_sm") else None
        slots = sms * (per_sm or 1)
        tiles, efficiency, spelled = _tiles(tile, shape)
        batch = shape[0] if shape else 1
        split = 1
        if grid and grid[2] > 1 and grid[2] != batch and tile.family != "flash":
            split = grid[2]
        elif tiles and ctas and ctas > tiles and tile.family != "flash":
            split = round(ctas / tiles)
        persistent = bool(tiles and ctas and ctas < tiles and ctas <= slots)
        model = "persistent" if persistent else ("waves" if tiles else "grid")
        work = tiles if persistent else ctas
        waves = work / slots if work else None
        fill = (1.0 if work % slots == 0 else (work % slots) / slots) if work else None
        per_step = group.groupby("step")["dur_us"].sum().reindex(sorted(activities["step"].unique()), fill_value=0)
        kernel_per_step = k_rows.groupby("step")["dur_us"].sum()
        gemm_like = group["name"].map(kernel_class).isin(("gemm", "attention"))
        r = {
            "pass": pas, "component": component, "role": role, "kernel": main, "family": tile.family,
            "gemm_kernels_per_step": int(gemm_like.sum()) / steps,
            "other_gemm_kernels": ", ".join(sorted(set(group.loc[gemm_like, "name"]) - {main}))[:300],
            "batch": shape[0] if shape else None, "m": shape[1] if shape else None,
            "n": shape[2] if shape else None, "k": shape[3] if shape else None, "shape_source": source,
            "tile": tile.tile, "kernel_head_dim": tile.head_dim, "k_step": tile.k_step, "stages": tile.stages,
            "cluster": f"{tile.cluster[0]}x{tile.cluster[1]}" if tile.cluster else "",
            "grid": "x".join(map(str, grid)) if grid else "", "ctas": ctas, "block_threads": threads,
            "registers": _number(first.get("registers")),
            "shared_memory_kb": (_number(first.get("shared_memory")) or 0) / 1024,
            "ctas_per_sm": per_sm, "sms": sms, "wave_slots": slots, "tiles": tiles, "tiles_spelled": spelled,
            "waves": waves, "full_waves": math.ceil(waves) if waves else None,
            "last_wave_fill_pct": 100 * fill if fill is not None else None,
            "wave_efficiency_pct": 100 * work / (math.ceil(work / slots) * slots) if work else None,
            "tile_efficiency_pct": 100 * efficiency if efficiency is not None else None,
            "wave_model": model, "persistent": persistent, "split_k": split, "split_k_in_name": tile.split_k_in_name,
            "time_us": float(per_step.median()), "kernel_us": float(kernel_per_step.median()),
        }
        gemm = component in GEMM_COMPONENTS and shape is not None
        r.update(_roofline(shape if gemm else None, bytes_per_element, peak_tflops, copy_tbps))
        r["why"] = _why(r)
        rows.append(r)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["flops"] = [2 * r["batch"] * r["m"] * r["n"] * r["k"] if r["component"] in GEMM_COMPONENTS and r["m"]
                    else np.nan for r in rows]
    if components is not None and "flops" in components:
        given = components.set_index(["pass", "component", "role"])
        keys = list(zip(out["pass"], out["component"], out["role"]))
        out["flops"] = [float(given["flops"].get(k, np.nan)) if k in given.index else f
                        for k, f in zip(keys, out["flops"])]
        if "time_us" in given:
            out["time_us"] = [float(given["time_us"].get(k)) if k in given.index else t
                              for k, t in zip(keys, out["time_us"])]
    out["flops"] = out["flops"].astype(float).where(lambda f: f > 0)
    out["tflops"] = out["flops"] / (out["time_us"] * 1e-6) / 1e12
    out["pct_of_roofline"] = 100 * out["tflops"] / out["roofline_tflops"].astype(float)
    return out.drop(columns=["tiles_spelled", "split_k_in_name"])

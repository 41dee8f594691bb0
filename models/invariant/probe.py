"""The bitwise probe: is a matmul's row i the same, bit for bit, whatever the number of rows M?

For a function fn: x (M, K) -> (M, N) and a sweep of M, every M-row product is compared with the largest
product's first M rows (the reference M), and a set of rows with the same rows computed alone (M = 1).
Comparisons are of bit patterns (integer views), so -0.0 vs +0.0 and NaN payloads count. Results stay on the
device until the end (one synchronisation per probe), so a sweep of ~600 M costs about the GEMMs themselves.

Device-agnostic on purpose: the CPU tests drive it with stand-in matmuls that are, or are not, M-dependent.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable

import torch

# rows compared with their one-row product: the first few, and each side of the tile and bucket edges
ALONE_ROWS = (0, 1, 2, 3, 7, 15, 16, 31, 63, 64, 127, 128, 255, 256, 511, 1023, 2047, 4095, 8191)
INT_VIEW = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
            torch.float64: torch.int64}


def probe_tokens(max_m: int = 8192, *, quick: bool = False) -> tuple[int, ...]:
    """The M of a probe. Thorough (the default): every M to 256, every 16th to 1024, every 64th beyond,
    and each side (-1, 0, +1) of every multiple of 128 and power of two: where tile counts and M buckets
    change, and where cuBLAS's heuristics tend to switch kernels. ~600 M to 8192, ~1-2 s per shape on an H200.
    Quick: every M to 64, every 8th to 256, every 256th beyond, and the powers of two with their sides."""
    if quick:
        picked = set(range(1, 65)) | set(range(72, 257, 8)) | set(range(512, max_m + 1, 256))
        edges = [2 ** p for p in range(1, 14)]
    else:
        picked = set(range(1, 257)) | set(range(272, 1025, 16)) | set(range(1088, max_m + 1, 64))
        edges = sorted({2 ** p for p in range(1, 14)} | set(range(128, max_m + 1, 128)))
    picked |= {e + d for e in edges for d in (-1, 0, 1)} | {max_m}
    return tuple(sorted(m for m in picked if 1 <= m <= max_m))


@dataclass(frozen=True)
class ProbeVerdict:
    invariant: bool
    m_checked: int
    m_max: int
    m_failed: tuple[int, ...]  # M where some row differed
    max_abs_diff: float  # the largest difference seen (0.0 where invariant)
    rows_alone: int  # rows also compared with their one-row product

    @property
    def failed_at(self) -> str:
        return ranges(self.m_failed)

    def summary(self) -> str:
        if self.invariant:
            return f"bitwise invariant at all {self.m_checked} M (1..{self.m_max})"
        return (f"not invariant at {len(self.m_failed)} of {self.m_checked} M ({self.failed_at}; "
                f"max |diff| {self.max_abs_diff:.3g})")

    def to_dict(self) -> dict:
        return {"invariant": self.invariant, "m_checked": self.m_checked, "m_max": self.m_max,
                "m_failed": self.failed_at, "n_failed": len(self.m_failed), "max_abs_diff": self.max_abs_diff,
                "rows_alone": self.rows_alone}


def ranges(values) -> str:
    """[1, 2, 3, 5, 8, 9] -> '1-3, 5, 8-9'."""
    values = sorted(set(int(v) for v in values))
    spans, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i == len(values) - 1 or values[i + 1] != v + 1:
            spans.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(spans)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(INT_VIEW[t.dtype]) if t.dtype in INT_VIEW else t


def _differs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (_bits(a) != _bits(b)).any()


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape and the same bit patterns (torch.equal calls -0.0 and +0.0 equal; this does not)."""
    if a.shape != b.shape:
        return False
    return not a.numel() or not bool(_differs(a, b))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.float() - b.float()).abs().amax() if a.numel() else torch.zeros((), device=a.device)


@torch.inference_mode()
def probe(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tokens, *,
          alone_rows: tuple[int, ...] = ALONE_ROWS) -> ProbeVerdict:
    """Compare fn(x[:m]) with fn(x[:max m])[:m] for every m in `tokens`, and row r of it with fn(x[r:r+1])."""
    tokens = sorted({int(m) for m in tokens if 1 <= m <= x.shape[0]})
    if not tokens:
        raise ValueError("probe: no token count within the operand's rows")
    full = fn(x[:tokens[-1]])
    rows = [r for r in sorted(set(alone_rows)) if r < tokens[-1]]
    alone = torch.cat([fn(x[r:r + 1]) for r in rows])
    index = torch.tensor(rows, device=x.device, dtype=torch.long)
    bad = torch.zeros(len(tokens), dtype=torch.bool, device=x.device)
    diff = torch.zeros(len(tokens), dtype=torch.float32, device=x.device)
    for i, m in enumerate(tokens):
        out = fn(x[:m])
        inside = bisect.bisect_left(rows, m)  # rows[:inside] lie inside this product
        differs = _differs(out, full[:m])
        worst = _max_diff(out, full[:m])
        if inside:
            mine = out[index[:inside]]
            differs = differs | _differs(mine, alone[:inside])
            worst = torch.maximum(worst, _max_diff(mine, alone[:inside]))
        bad[i] = differs
        diff[i] = worst
    bad, diff = bad.cpu(), diff.cpu()
    failed = tuple(m for m, b in zip(tokens, bad.tolist()) if b)
    return ProbeVerdict(not failed, len(tokens), tokens[-1], failed, float(diff.max()) if failed else 0.0, len(rows))


@torch.inference_mode()
def agreement(fn_a: Callable[[torch.Tensor], torch.Tensor], fn_b: Callable[[torch.Tensor], torch.Tensor],
              x: torch.Tensor, tokens) -> ProbeVerdict:
    """Do two matmuls give bitwise the same product at every m? (Two kernels that agree everywhere and are
    each invariant can share the M range between them and stay invariant.)"""
    tokens = sorted({int(m) for m in tokens if 1 <= m <= x.shape[0]})
    bad = torch.zeros(len(tokens), dtype=torch.bool, device=x.device)
    diff = torch.zeros(len(tokens), dtype=torch.float32, device=x.device)
    for i, m in enumerate(tokens):
        a, b = fn_a(x[:m]), fn_b(x[:m])
        bad[i] = _differs(a, b)
        diff[i] = _max_diff(a, b)
    bad, diff = bad.cpu(), diff.cpu()
    failed = tuple(m for m, b in zip(tokens, bad.tolist()) if b)
    return ProbeVerdict(not failed, len(tokens), tokens[-1] if tokens else 0, failed,
                        float(diff.max()) if failed else 0.0, 0)


@torch.inference_mode()
def accuracy(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None, rows: int = 256) -> tuple[bool, float]:
    """Is fn's product within rounding of the exact one (fp64 on CPU inputs, fp32 on a GPU)? The bound: a few
    units in the last place of the output plus the fp32 accumulation's own error (grows like sqrt(K)).
    Returns (ok, worst |error| / bound): a wrong kernel is not a candidate, however invariant."""
    exact = torch.float64 if x.device.type == "cpu" else torch.float32
    a = x[:rows]
    ref = torch.nn.functional.linear(a.to(exact), weight.to(exact), None if bias is None else bias.to(exact))
    out = fn(a).to(exact)
    ulp = torch.finfo(x.dtype).eps * ref.abs().clamp_min(torch.finfo(x.dtype).tiny)
    bound = 4 * ulp + 1e-6 * (x.shape[-1] ** 0.5) * ref.abs().max()
    ratio = float(((out - ref).abs() / bound).max())
    return ratio <= 1.0, ratio


@dataclass(frozen=True)
class CrossVerdict:
    """Several matmuls probed on one sweep of M: each one's rows against its own largest product and its rows
    alone (`own`: what `probe` says), and every one's M-row products against every one's largest product
    (`failed[(a, b)]`: the M where a(x[:m]) differed from b(x[:max m])[:m], b = a included: rows alone left
    out there); `alone_differs[(a, b)]`: some row computed alone by a differed from the same row of b's."""

    tokens: tuple[int, ...]
    own: dict  # name -> ProbeVerdict
    failed: dict  # (name, reference) -> tuple of M
    alone_differs: dict  # (name, reference) -> bool, name != reference

    def consistent(self, name: str, reference: str, lo: int = 1, hi: int | None = None) -> bool:
        """name's rows are reference's largest product's at every probed M in [lo, hi), and, when the range
        starts at M = 1 (where a row alone runs), name's rows alone are too."""
        if name == reference and lo <= 1:
            bad = self.own[name].m_failed
        else:
            bad = self.failed[(name, reference)]
            if lo <= 1 and self.alone_differs[(name, reference)]:
                return False
        return not any(lo <= m and (hi is None or m < hi) for m in bad)


@torch.inference_mode()
def cross_probe(fns: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, tokens, *,
                alone_rows: tuple[int, ...] = ALONE_ROWS) -> CrossVerdict:
    """`probe` for every fn at once, plus every fn's rows against every other fn's largest product: which
    pairs may share the M range between them (one below a switch M, the other from it) and stay invariant."""
    tokens = sorted({int(m) for m in tokens if 1 <= m <= x.shape[0]})
    if not tokens:
        raise ValueError("cross_probe: no token count within the operand's rows")
    names = list(fns)
    top = tokens[-1]
    full = {name: fns[name](x[:top]) for name in names}
    rows = [r for r in sorted(set(alone_rows)) if r < top]
    index = torch.tensor(rows, device=x.device, dtype=torch.long)
    alone = {name: torch.cat([fns[name](x[r:r + 1]) for r in rows]) for name in names}
    bad = torch.zeros(len(tokens), len(names), len(names), dtype=torch.bool, device=x.device)
    own_bad = torch.zeros(len(tokens), len(names), dtype=torch.bool, device=x.device)
    diff = torch.zeros(len(tokens), len(names), dtype=torch.float32, device=x.device)
    for i, m in enumerate(tokens):
        inside = bisect.bisect_left(rows, m)
        for a, name in enumerate(names):
            out = fns[name](x[:m])
            for b, ref in enumerate(names):
                bad[i, a, b] = _differs(out, full[ref][:m])
            differs, worst = bad[i, a, a], _max_diff(out, full[name][:m])
            if inside:  # as `probe`: the rows alone too
                mine = out[index[:inside]]
                differs = differs | _differs(mine, alone[name][:inside])
                worst = torch.maximum(worst, _max_diff(mine, alone[name][:inside]))
            own_bad[i, a], diff[i, a] = differs, worst
    alone_bad = {(a, b): _differs(alone[a], full[b][index]) for a in names for b in names if a != b}
    bad, own_bad, diff = bad.cpu(), own_bad.cpu(), diff.cpu()
    alone_differs = {key: bool(value) for key, value in alone_bad.items()}
    own, failed = {}, {}
    for a, name in enumerate(names):
        m_bad = tuple(m for m, flag in zip(tokens, own_bad[:, a].tolist()) if flag)
        own[name] = ProbeVerdict(not m_bad, len(tokens), top, m_bad, float(diff[:, a].max()) if m_bad else 0.0,
                                 len(rows))
        for b, ref in enumerate(names):
            failed[(name, ref)] = tuple(m for m, flag in zip(tokens, bad[:, a, b].tolist()) if flag)
    return CrossVerdict(tuple(tokens), own, failed, alone_differs)

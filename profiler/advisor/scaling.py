"""How much loss a shape change may cost: the scaling-law shape sensitivity curves (paper/003, after Kaplan
et al.: loss increase vs feed-forward ratio, aspect ratio d_model/n_layer and head dimension d_model/n_head).

The curves are the points read off the figure in 003 (approximate). We interpolate linearly in log10(x)
between them, extend the end segments outside the range the figure shows (and say so), and compare a
proposal with the given shape: only differences are used, because the readings are too coarse for absolute
claims. 003's exchange rate, "22% additional compute compensates for 1% loss increase", turns a loss
difference into compute, so it can be weighed against a speed-up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from models import ModelConfig

COMPUTE_PCT_PER_LOSS_PCT = 22.0  # 003, right panel annotation
LOSS_TOLERANCE_PCT = 0.5  # a proposal costing more than this (percentage points of loss) leaves the flat region

# (x, loss increase %) per series, as read from 003
FEED_FORWARD = {"n_head=8": ((1.0, 0.5), (10.0, 8.0)), "d_model/n_head=64": ((1.0, 0.5), (10.0, 9.0))}
ASPECT = {50e6: ((10.0, 2.0), (31.6, 0.0), (100.0, 4.0)),
          274e6: ((10.0, 1.0), (31.6, 0.0), (100.0, 8.0)),
          1.5e9: ((10.0, 3.0), (31.6, 0.0), (100.0, 3.0))}
HEAD_DIM = {256: ((10.0, 1.0), (31.6, 0.0), (100.0, 2.0)),
            512: ((10.0, 0.5), (31.6, 0.0), (100.0, 1.5)),
            1024: ((10.0, 0.5), (31.6, 0.0), (100.0, 1.0))}


def interpolate(points: tuple[tuple[float, float], ...], x: float) -> tuple[float, bool]:
    """Loss increase at x, linear in log10(x), the end segments extended outside the points (never below 0).
    Returns (value, whether x lies inside the range the points cover)."""
    lx = math.log10(x)
    pts = [(math.log10(px), py) for px, py in points]
    inside = pts[0][0] <= lx <= pts[-1][0]
    i = next((i for i in range(len(pts) - 1) if lx <= pts[i + 1][0]), len(pts) - 2)
    (x0, y0), (x1, y1) = pts[i], pts[i + 1]
    return max(0.0, y0 + (y1 - y0) * (lx - x0) / (x1 - x0)), inside


def _nearest(table: dict, value: float):
    return min(table, key=lambda k: abs(math.log10(k) - math.log10(value)))


def feed_forward_ratio(cfg: ModelConfig) -> float:
    """d_ff / d_model in parameter terms: a SwiGLU MLP has three matrices, so its f counts 1.5 times."""
    return (1.5 if cfg.activation == "swiglu" else 1.0) * cfg.ffn_size / cfg.hidden_size


@dataclass(frozen=True)
class ShapeLoss:
    ff_ratio: float
    aspect_ratio: float
    head_dim: int
    ff_loss_pct: float
    aspect_loss_pct: float
    head_dim_loss_pct: float
    outside: tuple[str, ...]  # the axes where the shape lies outside the range 003 shows
    series: str  # which of 003's series were used

    @property
    def total_pct(self) -> float:
        return self.ff_loss_pct + self.aspect_loss_pct + self.head_dim_loss_pct

    def to_dict(self) -> dict:
        return {**asdict(self), "total_pct": self.total_pct}


def shape_loss(cfg: ModelConfig, non_embedding_params: int) -> ShapeLoss:
    """Estimated loss increase (%) of a shape on each of 003's three axes."""
    ff = feed_forward_ratio(cfg)
    aspect = cfg.hidden_size / cfg.num_layers
    ff_loss, ff_in = max((interpolate(p, ff) for p in FEED_FORWARD.values()), key=lambda r: r[0])
    size_key = _nearest(ASPECT, max(non_embedding_params, 1))
    aspect_loss, aspect_in = interpolate(ASPECT[size_key], aspect)
    d_key = _nearest(HEAD_DIM, cfg.hidden_size)
    hd_loss, hd_in = interpolate(HEAD_DIM[d_key], cfg.head_dim)
    outside = tuple(name for name, ok in (("feed-forward ratio", ff_in), ("aspect ratio", aspect_in),
                                          ("head dimension", hd_in)) if not ok)
    series = f"aspect: {size_key / 1e6:,.0f}M-parameter series; head dim: d_model={d_key} series"
    return ShapeLoss(ff, aspect, cfg.head_dim, ff_loss, aspect_loss, hd_loss, outside, series)


@dataclass(frozen=True)
class ShapeCaution:
    loss_delta_pct: float  # estimated extra loss of the proposal over the given shape (>= 0 counted)
    compute_equivalent_pct: float  # what that loss is worth in compute, at 003's 22% per 1%
    leaves_flat_region: bool
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def caution(given: ShapeLoss, proposal: ShapeLoss) -> ShapeCaution:
    """Does the proposal leave the region where loss is flat, relative to the given shape?

    Yes when it moves onto an axis range 003 does not show (and the given shape was inside it), or when its
    estimated loss exceeds the given shape's by more than LOSS_TOLERANCE_PCT. Gains are not credited: the
    readings are too coarse to promise a lower loss."""
    axes = (("feed-forward ratio", "ff_ratio", "ff_loss_pct", "{:.2f}"),
            ("aspect ratio d_model/n_layer", "aspect_ratio", "aspect_loss_pct", "{:.0f}"),
            ("head dimension d_model/n_head", "head_dim", "head_dim_loss_pct", "{:.0f}"))
    delta = sum(max(0.0, getattr(proposal, attr) - getattr(given, attr)) for _, _, attr, _ in axes)
    moved = []
    for label, x_attr, loss_attr, fmt in axes:
        gx, px = getattr(given, x_attr), getattr(proposal, x_attr)
        d = getattr(proposal, loss_attr) - getattr(given, loss_attr)
        d = 0.0 if abs(d) < 0.05 else d  # no "-0.0 pp"
        if not math.isclose(gx, px, rel_tol=1e-9):
            moved.append(f"{label} {fmt.format(gx)} -> {fmt.format(px)} ({d:+.1f} pp)")
    new_outside = [axis for axis in proposal.outside if axis not in given.outside]
    leaves = bool(new_outside) or delta > LOSS_TOLERANCE_PCT
    compute = delta * COMPUTE_PCT_PER_LOSS_PCT
    if not moved:
        message = "same feed-forward ratio, aspect ratio and head dimension as the given shape"
    else:
        message = "; ".join(moved) + f": est. loss +{delta:.1f}% (~{compute:.0f}% compute at 22% per 1%)"
    if new_outside:
        message += f"; outside the range 003 shows for {', '.join(new_outside)} (loss not known to stay flat)"
    elif leaves:
        message += "; leaves the flat region"
    return ShapeCaution(delta, compute, leaves, message)

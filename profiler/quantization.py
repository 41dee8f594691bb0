"""Tile and wave quantization of a GEMM's output (paper Section III-B and VI-B), as pure arithmetic.

A GEMM's (m, n) output is cut into t1 x t2 tiles, one thread block each; blocks run in waves of at most
one per SM (the paper's simplification: one resident block per SM). The last wave's fill tells how
much of the GPU the tail runs on: a fill just above 0 is the dip the paper's Figure 5b shows.
"""

from __future__ import annotations

import math

# the tile sizes the paper discusses (128x256 the most efficient) plus the common smaller ones
TILE_SIZES = ((128, 256), (256, 128), (128, 128), (64, 128))


def largest_power_of_two_dividing(n: int) -> int:
    return n & -n


def tiles(m: int, n: int, tile: tuple[int, int], batch: int = 1) -> int:
    return batch * math.ceil(m / tile[0]) * math.ceil(n / tile[1])


def waves(num_tiles: int, sms: int) -> int:
    return math.ceil(num_tiles / sms)


def last_wave_fill(num_tiles: int, sms: int) -> float:
    """Fraction of SMs busy in the last wave (1.0 = no wave quantization loss)."""
    rem = num_tiles % sms
    return 1.0 if rem == 0 else rem / sms


def tile_efficiency(m: int, n: int, tile: tuple[int, int]) -> float:
    """Useful fraction of the computed tiles' area (1.0 = no tile quantization loss)."""
    return (m * n) / (math.ceil(m / tile[0]) * tile[0] * math.ceil(n / tile[1]) * tile[1])


def wave_efficiency(num_tiles: int, sms: int) -> float:
    """Useful fraction of the SM-time of all waves."""
    return num_tiles / (waves(num_tiles, sms) * sms)

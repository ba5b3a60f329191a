"""The quantizer grids issue 34 changed, old against new: ``python -m experiments.bench grids``.

Clipped uniform (Bozorgasl & Chen, arXiv:2405.13365), B = 2 and 4, each grid at its own OCTAV
clip, nearest rounding: clip, MSE and mean error in units of the data's σ, and whether
Q(−x) = −Q(x). Min–max (QAFeL's FLSim channel, arXiv:2410.00242), 4 and 8 bits: MSE, mean error
in steps, exact zeros kept. Data: 10⁶ samples of N(0, 1), Student-t(2) and a 70 %-sparse Gaussian,
seed 34.
"""

from __future__ import annotations

import torch

from fp8fl.numerics.qsgd import anchored_minmax_quantize, minmax_quantize
from fp8fl.numerics.uniform import GRIDS, octav_clip, quantize_uniform

SEED = 34
COUNT = 10**6


def _data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(SEED)
    torch.manual_seed(SEED)  # StudentT draws from the global generator
    sparse = torch.randn(COUNT, generator=gen)
    sparse[torch.rand(COUNT, generator=gen) < 0.7] = 0.0
    return {
        "gaussian": torch.randn(COUNT, generator=gen),
        "student-t(2)": torch.distributions.StudentT(2.0).sample((COUNT,)),
        "70%-sparse": sparse,
    }


def clipped_uniform_rows(data: dict[str, torch.Tensor]) -> list[str]:
    rows = ["| data | B | grid | s/σ | MSE/σ² | mean(Q − x)/σ | max abs(Q(−x) + Q(x)) |"]
    rows.append("|---|---|---|---|---|---|---|")
    for name in ("gaussian", "student-t(2)"):
        w, sd = data[name], float(data[name].double().std())
        for bits in (2, 4):
            for grid in GRIDS[::-1]:
                s = octav_clip(w, bits, grid=grid)
                q = quantize_uniform(w, s, bits, False, grid=grid)[1].double()
                q_minus = quantize_uniform(-w, s, bits, False, grid=grid)[1].double()
                e = q - w.double()
                rows.append(
                    f"| {name} | {bits} | {grid} | {s / sd:.3f} | {float(e.pow(2).mean()) / sd**2:.4g}"
                    f" | {float(e.mean()) / sd:+.4f} | {float((q + q_minus).abs().max()):.3g} |"
                )
    return rows


def minmax_rows(data: dict[str, torch.Tensor]) -> list[str]:
    rows = [
        "| data | bits | grid | MSE | mean(Q − x)/step | exact zeros kept |",
        "|---|---|---|---|---|---|",
    ]
    for name, flat in data.items():
        v = 0.01 * flat.view(1000, 1000)  # a 2-D tensor: min–max leaves 1-D ones in FP32
        zeros = v == 0
        for bits in (4, 8):
            step = (max(float(v.max()), 0.0) - min(float(v.min()), 0.0)) / (2**bits - 1)
            for grid, quantize in (
                ("anchored", anchored_minmax_quantize),
                ("flsim", minmax_quantize),
            ):
                q = quantize(v, bits).double()
                e = q - v.double()
                kept = int((q[zeros] == 0).sum())
                rows.append(
                    f"| {name} | {bits} | {grid} | {float(e.pow(2).mean()):.4g} | "
                    f"{float(e.mean()) / step:+.4f} | {kept:,} of {int(zeros.sum()):,} |"
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    data = _data()
    print("\n".join(clipped_uniform_rows(data)))
    print()
    print("\n".join(minmax_rows(data)))


if __name__ == "__main__":
    main()

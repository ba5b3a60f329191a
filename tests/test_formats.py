"""FloatFormat: validation, names, the flexible bias and the grid (Wang et al. 2024,
arXiv:2407.02610, eq. 2-4)."""

import math

import numpy as np
import pytest
import torch

from fp8fl.numerics.formats import E2M1, E2M3, E3M2, E3M4, E4M3, E5M2, FloatFormat

NAMED = {"e4m3": E4M3, "e5m2": E5M2, "e3m4": E3M4, "e2m3": E2M3, "e3m2": E3M2, "e2m1": E2M1}
ALL_FORMATS = [FloatFormat(e, m) for e in range(1, 8) for m in range(8 - e)]


@pytest.mark.parametrize(("name", "fmt"), sorted(NAMED.items()))
def test_named_formats_are_reachable_by_name(name, fmt):
    assert FloatFormat.from_name(name) == fmt
    assert FloatFormat.from_name(name.upper()) == fmt
    assert fmt.name == name


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((0, 3), ValueError, "exp_bits >= 1"),
        ((4, -1), ValueError, "man_bits >= 0"),
        ((5, 3), ValueError, "at most 8"),
        ((4.0, 3), TypeError, "exp_bits must be an int"),
        ((True, 3), TypeError, "exp_bits must be an int"),
    ],
)
def test_invalid_formats_are_rejected(args, error, message):
    with pytest.raises(error, match=message):
        FloatFormat(*args)


@pytest.mark.parametrize("name", ["fp8", "e4m4", "e0m3", "", "e4m3x"])
def test_unknown_format_names_are_rejected(name):
    with pytest.raises(ValueError, match="float format"):
        FloatFormat.from_name(name)


def test_formats_are_frozen_and_hashable():
    with pytest.raises(AttributeError):
        E4M3.exp_bits = 5  # type: ignore[misc]
    assert len({E4M3, FloatFormat(4, 3), E5M2}) == 2
    assert E4M3.bits == 8 and E2M1.bits == 4 and E3M2.bits == 6


@pytest.mark.parametrize("alpha", [1.0, 0.1, 3.7e-3, 448.0, 12345.678])
def test_e4m3_grid_has_255_values_max_alpha_and_smallest_step(alpha):
    grid = E4M3.grid(alpha)
    alpha32 = float(np.float32(alpha))
    assert grid.dtype == torch.float32 and grid.numel() == 255
    assert torch.all(grid[1:] > grid[:-1]), "sorted and unique"
    assert grid.max().item() == alpha32, "maximum is exactly alpha"
    assert grid.min().item() == -alpha32
    b = E4M3.bias(alpha)
    smallest = 2.0 ** (1 - b - E4M3.man_bits)
    positive = grid[grid > 0]
    assert abs(positive.min().item() / smallest - 1) < 2**-23  # float32 rounding of 2^(1-b-m)


@pytest.mark.parametrize("fmt", ALL_FORMATS, ids=str)
def test_grid_size_and_symmetry_for_every_format(fmt):
    alpha = max(1.0, fmt.min_alpha() * 2)
    grid = fmt.grid(alpha)
    assert grid.numel() == 2 * (2 ** (fmt.exp_bits + fmt.man_bits) - 1) + 1
    assert torch.equal(grid, -grid.flip(0))
    assert grid.max().item() == float(np.float32(alpha))


@pytest.mark.parametrize("fmt", list(NAMED.values()), ids=str)
@pytest.mark.parametrize("alpha", [0.37, 2.5, 1000.0])
def test_grid_matches_equation_2_with_the_flexible_bias(fmt, alpha):
    """Every code's value from eq. 2 (float64) equals the float32 grid to within float32 rounding."""
    e, m = fmt.exp_bits, fmt.man_bits
    b = fmt.bias(alpha)
    expected = []
    for p in range(2**e):
        for k in range(2**m):
            if p == 0:
                expected.append(2.0 ** (1 - b) * (k / 2**m))
            else:
                expected.append(2.0 ** (p - b) * (1 + k / 2**m))
    expected = np.array(expected)
    mags = fmt.magnitudes(alpha).astype(np.float64)
    np.testing.assert_allclose(mags, expected, rtol=2**-23, atol=0)
    # the largest value 2^(2^e - 1 - b) (2 - 2^-m) is alpha: that is what the bias is for
    assert math.isclose(
        2.0 ** (2**e - 1 - b) * (2 - 2.0**-m), float(np.float32(alpha)), rel_tol=1e-12
    )


@pytest.mark.parametrize(
    ("alpha", "error", "message"),
    [
        (0.0, ValueError, "must be > 0"),
        (-1.0, ValueError, "must be > 0"),
        (float("nan"), ValueError, "NaN"),
        (float("inf"), ValueError, "finite"),
        (1e-40, ValueError, "too small"),
        (1e39, ValueError, "finite|overflows"),
        ("1.0", TypeError, "positive float"),
        (True, TypeError, "positive float"),
        (torch.ones(2), ValueError, "0-d"),
        (torch.tensor(1), TypeError, "floating-point"),
    ],
)
def test_bad_alpha_is_rejected(alpha, error, message):
    with pytest.raises(error, match=message):
        E4M3.grid(alpha)

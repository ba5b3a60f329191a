"""The FP8 presets as Wang et al. 2024 (arXiv:2407.02610) define them: (qat, wire, server-opt) of
each method in Tables 1-3 and Fig. 4, written out independently of the registry under test."""

PAPER_PRESETS = {
    "fp32": ("none", "fp32", "average"),
    "uq": ("nearest", "stochastic", "average"),
    "uq+": ("nearest", "stochastic", "mse"),
    "bq": ("nearest", "nearest", "average"),
    "qat-fp32wire": ("nearest", "fp32", "average"),
    "randqat-fp32wire": ("stochastic", "fp32", "average"),
}

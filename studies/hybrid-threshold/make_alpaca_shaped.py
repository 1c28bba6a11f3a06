"""Build an Alpaca-shaped trace (the Alpaca data set itself is not available offline).

Token counts are drawn from lognormal distributions whose means are the published Alpaca means in Kwon et
al., "Efficient Memory Management for Large Language Model Serving with PagedAttention", SOSP 2023, Fig. 11
(input 19.31, output 58.45 tokens). The spreads (sigma of log) are assumed, not published. Run from the
repository root:

    python studies/hybrid-threshold/make_alpaca_shaped.py -o studies/hybrid-threshold/alpaca-shaped.parquet
"""

from __future__ import annotations

import argparse

import numpy as np

from dcsim.traces.trace import Trace

MEAN_IN, MEAN_OUT = 19.31, 58.45  # Kwon et al. 2023, Fig. 11 (Alpaca)
CITATION = ("Kwon et al., 'Efficient Memory Management for Large Language Model Serving with PagedAttention', "
            "SOSP 2023, Fig. 11 (Alpaca input/output length distributions)")


def lognormal_counts(mean: float, sigma: float, n: int, rng: np.random.Generator, floor: int) -> np.ndarray:
    """Integer counts >= floor from a lognormal with the given mean and sigma of log."""
    mu = np.log(mean) - sigma**2 / 2.0
    return np.maximum(np.rint(rng.lognormal(mu, sigma, n)), floor).astype(np.int64)


def build(n: int, sigma_in: float, sigma_out: float, seed: int) -> Trace:
    rng = np.random.default_rng(seed)
    n_in = lognormal_counts(MEAN_IN, sigma_in, n, rng, floor=2)  # BOS + at least one prompt token
    n_out = lognormal_counts(MEAN_OUT, sigma_out, n, rng, floor=1)
    prov = {
        "kind": "synthetic",
        "source": "Alpaca-shaped: lognormal token counts with Alpaca's published means",
        "citation": CITATION,
        "mean_in_published": MEAN_IN, "mean_out_published": MEAN_OUT,
        "sigma_in": sigma_in, "sigma_out": sigma_out,
        "sigma_note": "assumed (not published); mu = ln(mean) - sigma^2/2 so the lognormal mean is the published one",
        "rounding": "rint, floors n_in >= 2, n_out >= 1",
        "seed": seed, "rows": n,
        "command": (f"python studies/hybrid-threshold/make_alpaca_shaped.py -n {n} --sigma-in {sigma_in} "
                    f"--sigma-out {sigma_out} --seed {seed} -o studies/hybrid-threshold/alpaca-shaped.parquet"),
    }
    return Trace(n_in, n_out, None, None, prov).validate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--sigma-in", type=float, default=0.7)
    ap.add_argument("--sigma-out", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    build(a.n, a.sigma_in, a.sigma_out, a.seed).to_parquet(a.out)


if __name__ == "__main__":
    main()

"""What a fit returns (FitResult) and its de-duplicated not-covered list, shared by the run and step fits."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from dcsim.profiles.fit_runs import Terms
from dcsim.profiles.profile import Profile


@dataclass
class FitResult:
    """The profile and the per-row comparison that the plot and the tests read."""

    profile: Profile
    rows: pd.DataFrame  # measured table (warm-ups dropped) with pred_* columns
    terms: Terms


def dedupe(items: list[str]) -> list[str]:
    """The items in their first order, each once (a gap may be filed by more than one step)."""
    seen, out = set(), []
    for s in items:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out

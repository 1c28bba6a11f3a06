"""Batching policies, chosen by name from a scenario (`fleet[i].batching.policy`).

Every module in this folder is imported here, so a policy registers itself (`@policy("name")` in
`base.py`) by being a file in the folder: adding one touches one file.
"""

from __future__ import annotations

import importlib
import pkgutil

from dcsim.sim.batching.base import (
    POLICIES,
    BatchParams,
    Policy,
    PolicyParamsError,
    make_policy,
    parse_params,
    policy,
    policy_class,
)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["POLICIES", "BatchParams", "Policy", "PolicyParamsError", "make_policy", "parse_params", "policy",
           "policy_class"]

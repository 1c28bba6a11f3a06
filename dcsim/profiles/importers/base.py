"""What every measurement source of `dcsim fit --from NAME` provides, and the registry they are chosen from."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from dcsim.registry import Registry


class Importer:
    """A measurement source: `load(paths, opts)` -> (measurement table, fit metadata), as the package's
    docstring describes. `needs` are the options it cannot do without and `takes` the others it reads (argparse
    names, e.g. "gpu"); `many` says whether it reads several folders into one table."""

    help = ""
    needs: tuple[str, ...] = ()
    takes: tuple[str, ...] = ()
    many = False

    def load(self, paths: list[Path], opts: Mapping[str, Any]) -> tuple[pd.DataFrame, dict]:
        raise NotImplementedError


IMPORTERS: Registry[Importer] = Registry("measurement source")

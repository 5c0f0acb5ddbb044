"""Choose layers of a run by module type and by a glob on their qualified names."""

import fnmatch

import numpy as np
import pandas as pd

from gradscope.errors import UsageError


def select_layers(layers: pd.DataFrame, types=None, pattern=None) -> np.ndarray:
    """Positions (in depth order) of the layers whose type is in `types` and name matches `pattern`.

    `types` is a list of module class names (e.g. ``["Conv2d"]``), `pattern` an fnmatch glob on
    qualified names (e.g. ``"layer3.*"``); None keeps every layer. Raises UsageError when no
    layer is left, naming the types that exist.
    """
    names = layers["name"].astype(str).to_numpy()
    keep = np.ones(len(names), dtype=bool)
    if types is not None:
        if isinstance(types, str):
            types = [types]
        keep &= layers["type"].astype(str).isin(list(types)).to_numpy()
    if pattern is not None:
        keep &= np.array([fnmatch.fnmatchcase(name, pattern) for name in names], dtype=bool)
    if not keep.any():
        available = ", ".join(sorted(set(layers["type"].astype(str))))
        raise UsageError(
            f"no layer matches types={list(types) if types else None} pattern={pattern!r}; "
            f"layer types in this run: {available or 'none'}"
        )
    return np.flatnonzero(keep)

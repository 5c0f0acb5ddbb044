"""Layers matched across runs by name: the union in depth order, and the layers runs share."""

import numpy as np


def layer_names(run, idx=None) -> list[str]:
    """The qualified layer names of `run` in depth order (only positions `idx` if given)."""
    names = run.layers["name"].astype(str).to_numpy()
    return (names if idx is None else names[idx]).tolist()


def merged_layer_order(name_lists) -> list[str]:
    """Every name of `name_lists` once, in depth order: each list keeps its own order, and a
    name only some runs have sits right after the name before it in its own run."""
    order = list(dict.fromkeys(name_lists[0]))
    for names in name_lists[1:]:
        position = {name: i for i, name in enumerate(order)}
        keys = {name: (i, 0, 0) for name, i in position.items()}
        anchor, added = -1, 0
        for name in names:
            if name in position:
                anchor, added = position[name], 0
            elif name not in keys:
                added += 1
                keys[name] = (anchor, 1, added)  # after its anchor, before the anchor's successor
        order = sorted(keys, key=keys.__getitem__)
    return order


def share_layers(name_lists) -> bool:
    """True when the runs' layers line up by name: every run shares at least half of its layers
    with the first run (ResNet-56 and its plain twin do; two unrelated nets do not)."""
    first = set(name_lists[0])
    return all(len(first.intersection(names)) * 2 >= len(names) for names in name_lists[1:])


def positions_in(order: list[str], names) -> np.ndarray:
    """Position of each of `names` in `order` (every name must be in it)."""
    where = {name: i for i, name in enumerate(order)}
    return np.array([where[name] for name in names], dtype=np.int64)


def common_layers(names_a, names_b) -> tuple[list[int], list[int]]:
    """(positions in A, positions in B) of the layer names both have, in A's depth order."""
    in_b = {name: j for j, name in enumerate(names_b)}
    pairs = [(i, in_b[name]) for i, name in enumerate(names_a) if name in in_b]
    return [i for i, _ in pairs], [j for _, j in pairs]

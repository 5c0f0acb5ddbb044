"""Run-file size: bytes per layer per record, split into compressed records, tail and the rest.

    python benchmarks/disk.py runs/exp/resnet56.h5 [more.h5 ...]

For each file: its size on disk; the compressed `stats/*` storage per sealed record and layer
(what a long run costs per record); the uncompressed `stats_tail/*` storage (at most one chunk
per statistic, whatever the length of the run); and the compression ratio of the sealed records.
"""

import argparse
from pathlib import Path

import h5py

import gradscope


def storage_bytes(group: h5py.Group) -> int:
    """Bytes allocated in the file for the datasets of `group`."""
    return sum(ds.id.get_storage_size() for ds in group.values())


def report(path: Path) -> None:
    with gradscope.open_run(path) as run:
        records, layers, stats = len(run.steps), len(run.layers), len(run.stats)
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        sealed = int(f["status"][0]["sealed"])
        body = storage_bytes(f["stats"])
        tail = storage_bytes(f["stats_tail"])
    size = path.stat().st_size
    raw = 4 * sealed * layers * stats
    print(f"{path}: {records} records x {layers} layers x {stats} stats, {size / 1e6:.2f} MB")
    print(f"  whole file: {size / max(1, records * layers):.1f} bytes per layer per record")
    if sealed:
        print(
            f"  compressed records ({sealed} sealed): {body / (sealed * layers):.1f} bytes per "
            f"layer per record ({body / (sealed * layers * stats):.2f} per value), "
            f"{body / raw:.3f} of raw float32"
        )
    print(
        f"  uncompressed tail: {tail / 1e3:.0f} kB; rest (metadata, steps, metrics): "
        f"{(size - body - tail) / 1e3:.0f} kB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run files (.h5)")
    for path in parser.parse_args().runs:
        report(path)


if __name__ == "__main__":
    main()

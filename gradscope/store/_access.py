"""Opening run files for reading without hangs: bounded SWMR retries, data checked against size."""

import ctypes
import functools
import itertools
import os
from pathlib import Path

import h5py
import h5py.defs
from h5py import h5d, h5f, h5p
from h5py._objects import phil  # h5py's lock around every HDF5 call (HDF5 is not thread-safe)

from gradscope.errors import RunFileError

# HDF5 re-reads checksummed metadata that fails its checksum (a SWMR writer may be mid-update),
# waiting twice as long after each try: its default of 100 tries turns a file cut short into a
# wait of hours. 24 tries wait about 30 ms in all, ample for a writer's update of one block.
METADATA_READ_ATTEMPTS = 24


@functools.cache
def _set_read_attempts():
    """HDF5's H5Pset_metadata_read_attempts, which h5py does not wrap (found through h5py's own
    link to the library, so it is the same HDF5 whatever its install)."""
    function = ctypes.CDLL(h5py.defs.__file__).H5Pset_metadata_read_attempts
    function.argtypes = [ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def open_for_reading(path) -> h5py.File:
    """The file opened in SWMR-read mode (also while a writer has it open), with bounded retries.

    Raises OSError or RuntimeError from HDF5 when it cannot be opened.
    """
    fapl = h5p.create(h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5f.LIBVER_LATEST, h5f.LIBVER_LATEST)
    with phil:  # called past h5py: another thread (a run writer) may be inside HDF5
        bounded = _set_read_attempts()(fapl.id, METADATA_READ_ATTEMPTS)
    if bounded < 0:
        raise RuntimeError("HDF5 refused to bound its metadata read attempts")
    name = os.fsencode(os.fspath(path))
    return h5py.File(h5f.open(name, h5f.ACC_RDONLY | h5f.ACC_SWMR_READ, fapl=fapl))


def require_on_disk(ds: h5py.Dataset, start: int, stop: int) -> None:
    """Raise RunFileError unless the bytes holding rows [start, stop) of `ds` are in the file.

    HDF5 reads raw data past the end of a file cut short as zeros or garbage without a word,
    so a reader checks each chunk it is about to read against the file's size on disk.
    """
    if stop <= start:
        return
    size = Path(ds.file.filename).stat().st_size
    layout = ds.id.get_create_plist().get_layout()
    if layout == h5d.COMPACT:  # stored in the object header: checksummed metadata
        return
    if layout == h5d.CONTIGUOUS:
        offset = ds.id.get_offset()
        _check_extent(ds, offset, ds.id.get_storage_size(), size)
        return
    rows, *inner = ds.chunks
    inner_starts = [range(0, n, c) for n, c in zip(ds.shape[1:], inner, strict=True)]
    for first in range(start - start % rows, stop, rows):
        for rest in itertools.product(*inner_starts):
            info = ds.id.get_chunk_info_by_coord((first, *rest))
            _check_extent(ds, info.byte_offset, info.size, size)


def _check_extent(ds: h5py.Dataset, offset, length: int, file_size: int) -> None:
    if offset is None:
        raise RunFileError(
            f"{ds.file.filename}: {ds.name} has no data stored for rows the file says are "
            "written (cut short or corrupt); copy the complete file again"
        )
    if offset + length > file_size:
        raise RunFileError(
            f"{ds.file.filename}: truncated: {ds.name} needs bytes up to {offset + length}, "
            f"the file has {file_size}; copy the complete file again"
        )

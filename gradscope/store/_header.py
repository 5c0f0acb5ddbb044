"""Check a run file's HDF5 superblock before opening it: catch files cut short."""

import struct
from pathlib import Path

from gradscope.errors import RunFileError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
OFFSET_FORMATS = {4: "<I", 8: "<Q"}  # "size of offsets" byte -> struct format


def check_not_truncated(path: Path) -> None:
    """Raise RunFileError if the file is shorter than its superblock says.

    HDF5 does not notice a cut-off file by itself, and in SWMR-read mode it retries reads of
    metadata past the end for minutes, taking it for a writer's update in progress. Only
    superblocks of version 2 and 3 (what `libver="latest"` writes) are checked. A file a writer
    has open (or that crashed) has a stale end-of-file address, so only its root object header is
    checked; a closed file must be as long as its end-of-file address.
    """
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head.startswith(HDF5_SIGNATURE) or len(head) < 12 or head[8] not in (2, 3):
        return
    offset_format = OFFSET_FORMATS.get(head[9])
    if offset_format is None:
        return
    width = struct.calcsize(offset_format)
    if len(head) < 12 + 4 * width:
        raise RunFileError(f"{path}: truncated inside the HDF5 superblock; copy the file again")
    base, _extension, end_of_file, root = (
        struct.unpack_from(offset_format, head, 12 + i * width)[0] for i in range(4)
    )
    open_for_write = head[11] != 0
    needed = base + (root + 1 if open_for_write else max(root + 1, end_of_file))
    size = path.stat().st_size
    if size < needed:
        raise RunFileError(
            f"{path}: truncated: {size} bytes on disk, the file header says at least {needed}; "
            "copy the complete file again"
        )

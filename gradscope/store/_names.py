"""What a run file is called in titles and reports: its folder and file stem."""

from pathlib import Path


def path_label(path) -> str:
    """The short name of a run file: its folder and file stem ("worked/resnet56"), or the
    stem alone when the path names no folder ("run.h5" in the current folder is "run")."""
    path = Path(path)
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem

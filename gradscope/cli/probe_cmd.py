"""`gradscope probe`: signal propagation at initialization, and width sweeps, before training."""

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

import gradscope
from gradscope.data import TrainBatches, load_dataset, resolve_device
from gradscope.errors import UsageError
from gradscope.models import get_model_spec, load_factory

DEFAULT_OUT = "runs/probes"  # a folder under the dashboard's default runs folder


def register(subparsers) -> None:
    """Add the `probe` subcommand."""
    parser = subparsers.add_parser(
        "probe",
        help="will it train? signal propagation at init, and width sweeps",
        description="Probe each MODEL before training: one forward, backward and optimizer step "
        "at initialization (then --steps more), measuring per layer Brock et al.'s channel "
        "moments, residual branch against skip, act_grad_norm, grad_norm and the update ratio; "
        "with --widths, the same at each width (a muP-style coordinate check). Writes one probe "
        "file per model and prints its diagnosis at initialization.",
    )
    parser.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="a bundled model name (see `gradscope models`) or module:factory, a callable "
        "returning a model (taking width= for --widths)",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--data",
        help="probe on training batches: cifar10, cifar100, synthetic, or a folder (as "
        "`gradscope record --data`)",
    )
    source.add_argument(
        "--synthetic",
        action="store_true",
        help="probe on a Gaussian batch N(0, 1) of the model's input shape (the default)",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="(default: %(default)s)")
    parser.add_argument(
        "--steps",
        type=int,
        default=0,
        help="optimizer steps to train and record after initialization (default: 0)",
    )
    parser.add_argument(
        "--widths",
        type=_widths,
        metavar="W1,W2,...",
        help="sweep these widths (the CIFAR nets' first-stage channels, 16 by default; a "
        "factory's width= argument), each from the same seed on the same batches",
    )
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="FILE.h5|DIR",
        help="the probe file (one model), or a folder for one <model>.h5 each (default: "
        f"{DEFAULT_OUT}); a probe file there is replaced, any other file refused",
    )
    parser.add_argument(
        "--input-shape",
        type=_shape,
        metavar="D1,D2,...",
        help="one example's shape for the Gaussian batch, e.g. 3,32,32 (default: the model's)",
    )
    parser.add_argument(
        "--lr", type=float, default=0.1, help="SGD learning rate of the steps (default: 0.1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print the diagnoses as JSON")
    parser.set_defaults(func=run)


def _widths(text: str) -> list[int]:
    """--widths: at least two distinct positive whole numbers, comma-separated."""
    try:
        widths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, got {text!r}"
        ) from None
    if len(set(widths)) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError(
            f"expected at least two distinct positive widths, got {text!r}"
        )
    return widths


def _shape(text: str) -> tuple[int, ...]:
    """--input-shape: positive sizes, comma-separated."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected sizes separated by commas, got {text!r}"
        ) from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return shape


def run(args) -> int:
    """Probe every model named, print each diagnosis, then the commands to look further."""
    outputs = _output_paths(args.models, args.out)
    device = resolve_device(args.device)
    dataset = None
    if args.data is not None:
        dataset = load_dataset(args.data, device=device)
    reports, paths = [], []
    for spec, path in zip(args.models, outputs, strict=True):
        name, build = _builder(spec, dataset, device)
        batch, input_shape = _batches(args, dataset, spec)
        torch.manual_seed(args.seed)  # every model starts from the same seed (a sweep: each width)
        with gradscope.probe(
            build if args.widths else build(),
            batch,
            steps=args.steps,
            widths=args.widths,
            path=path,
            input_shape=input_shape,
            batch_size=args.batch_size,
            optimizer=_sgd(args.lr),
            seed=args.seed,
            name=name,
        ) as probe:
            diagnosis = gradscope.diagnose(probe)
            reports.append(diagnosis.to_dict() if args.json else diagnosis.to_text())
        paths.append(path)
    if args.json:
        json.dump(reports, sys.stdout, indent=2)
        print()
        return 0
    for path, text in zip(paths, reports, strict=True):
        print(f"probe file: {path}")
        print(text)
        print()
    print("\n".join(_next_commands(paths, args.widths is not None)))
    return 0


def _output_paths(specs: list[str], out: str) -> list[Path]:
    """The probe file of each model: --out itself for one model and a .h5 path, else
    --out/<model>.h5."""
    target = Path(out)
    if target.suffix == ".h5":
        if len(specs) > 1:
            raise UsageError(
                f"--out {out} names one file for {len(specs)} models; give a folder instead"
            )
        return [target]
    names = [spec.rsplit(":", 1)[-1].rsplit(".", 1)[-1] for spec in specs]
    if len(set(names)) < len(names):
        raise UsageError(f"two models would write the same file in {out}: {', '.join(names)}")
    target.mkdir(parents=True, exist_ok=True)
    return [target / f"{name}.h5" for name in names]


def _builder(spec: str, dataset, device):
    """(name, build(width=None) -> model on `device`) for a bundled name or module:factory."""
    name, factory = load_factory(spec)
    bundled = ":" not in spec

    def build(width=None):
        options = {} if width is None else {"width": width}
        if bundled and dataset is not None:
            options["num_classes"] = dataset.num_classes
        model = factory(**options)
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
        return model.to(device)

    return name, build


def _batches(args, dataset, spec: str):
    """(batch argument of gradscope.probe, input_shape): the training batches of --data, or
    a Gaussian batch of --input-shape (a bundled model's own image size otherwise)."""
    if dataset is not None:
        return TrainBatches(dataset, batch_size=args.batch_size, seed=args.seed).batch, None
    if args.input_shape is not None or ":" in spec:
        return None, args.input_shape
    size = get_model_spec(spec).input_size
    return None, (3, size, size)


def _sgd(lr: float):
    """The optimizer of each model: `gradscope record`'s SGD at learning rate `lr`."""

    def make(model):
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)

    make.__name__ = f"SGD(lr={lr:g}, momentum=0.9, weight_decay=0.0001)"  # in the probe file
    return make


def _next_commands(paths: list[Path], sweep: bool) -> list[str]:
    files = " ".join(shlex.quote(str(p)) for p in paths)
    figure = "widths" if sweep else "spp"
    png = shlex.quote(str(paths[0].parent / f"{figure}.png"))
    runs = paths[0].parent.parent if paths[0].parent.name else Path(".")
    return [
        "next:",
        f"  gradscope export {files} --figure {figure} --out {png}",
        f"  gradscope dashboard --runs {shlex.quote(str(runs))}",
    ]

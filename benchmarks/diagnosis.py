"""The diagnosis on known failures: small broken setups and healthy controls, each trained on CPU
for a few seconds, recorded, diagnosed, and checked against the finding it should give.

    python benchmarks/diagnosis.py                      # every case: a table, right or wrong
    python benchmarks/diagnosis.py --only dead_relu_module --keep runs/bench   # keep run files
    python benchmarks/diagnosis.py --json diagnosis.json

A broken case is right when every expected finding is found (one of the kinds listed with "|",
on the expected layer where one is named); other findings are listed but do not make it wrong.
A healthy control is right when nothing is found. Exit code 1 if any case is wrong.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.diagnosis import diagnose
from gradscope.models import create_model

INPUTS, CLASSES = 32, 10  # vector cases: a linear teacher's labels for Gaussian inputs
VOCAB, SEQUENCE = 32, 16  # sequence cases: predict (token + previous token) mod VOCAB


@dataclass
class Setup:
    """What a case trains: a model, its optimizer, the batch of each step, how long."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    steps: int
    every: int = 1
    loss: Callable = F.cross_entropy  # loss(model output, target)


@dataclass
class Case:
    """A known setup and the findings the diagnosis must give on it."""

    name: str
    what: str
    build: Callable[[], Setup]
    expected: tuple[tuple[str, str | None], ...] = ()  # (kind, layer or None); () = healthy
    step: int | None = None  # the step the first expected finding must name, if any


@dataclass
class Row:
    """One line of the table."""

    case: str
    expected: str
    found: list[str] = field(default_factory=list)
    verdict: str = "wrong"  # right or wrong
    seconds: float = 0.0
    text: str = ""


# ----- data ---------------------------------------------------------------------------------


def vectors(step: int, rows: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of Gaussian vectors labelled by a fixed random linear teacher."""
    x = torch.randn(rows, INPUTS, generator=torch.Generator().manual_seed(1000 + step))
    teacher = torch.randn(INPUTS, CLASSES, generator=torch.Generator().manual_seed(7))
    return x, (x @ teacher).argmax(1)


def images(step: int, rows: int = 16, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of noise images labelled by a fixed random linear teacher on their pixels."""
    g = torch.Generator().manual_seed(2000 + step)
    x = torch.randn(rows, 3, size, size, generator=g)
    teacher = torch.randn(3 * size * size, CLASSES, generator=torch.Generator().manual_seed(8))
    return x, (x.flatten(1) @ teacher).argmax(1)


def sequences(step: int, rows: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences, and the target of each position (flattened as the model's output is):
    (token + previous token) mod VOCAB."""
    x = torch.randint(0, VOCAB, (rows, SEQUENCE), generator=torch.Generator().manual_seed(step))
    return x, ((x + x.roll(1, dims=1)) % VOCAB).flatten()


# ----- models -------------------------------------------------------------------------------


class MLP(nn.Module):
    """fc1 .. fcN with an activation between (a module, or functional with `functional`)."""

    def __init__(self, depth, width, act=nn.ReLU, functional=None, batchnorm=False):
        super().__init__()
        sizes = [INPUTS] + [width] * (depth - 1) + [CLASSES]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        hidden = range(depth - 1)
        self.norms = nn.ModuleList(nn.BatchNorm1d(width) for _ in hidden) if batchnorm else None
        self.acts = None if functional else nn.ModuleList(act() for _ in hidden)
        self.functional = functional

    def forward(self, x):
        for i, fc in enumerate(self.fcs[:-1]):
            x = fc(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = self.functional(x) if self.functional else self.acts[i](x)
        return self.fcs[-1](x)


class WithBranch(nn.Module):
    """A trunk and a classifier head, and an auxiliary branch whose output the loss ignores
    (`branch`), or a trunk whose features reach the head only through .detach() (`detach`)."""

    def __init__(self, mode: str):
        super().__init__()
        self.trunk = MLP(3, 32)
        self.trunk.fcs[-1] = nn.Linear(32, 32)
        self.aux = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
        self.head = nn.Linear(32, CLASSES)
        self.mode = mode

    def forward(self, x):
        features = torch.relu(self.trunk(x))
        if self.mode == "branch":
            self.aux_out = self.aux(features)  # computed, kept, not in the loss
        else:
            features = features.detach()
        return self.head(features)


class TinyTransformer(nn.Module):
    """Token embedding, `depth` encoder layers (post-LN, or pre-LN with `pre_norm`), a head."""

    def __init__(self, depth: int, pre_norm: bool, width: int = 32):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(torch.randn(SEQUENCE, width) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=pre_norm
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width) if pre_norm else nn.Identity()
        self.head = nn.Linear(width, VOCAB)

    def forward(self, x):
        h = self.embed(x) + self.position
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h)).flatten(0, 1)  # [rows * positions, VOCAB]


def sgd(model, lr, momentum=0.0):
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def seeded(build):
    """The model of every case starts from seed 0."""

    def wrapped():
        torch.manual_seed(0)
        return build()

    return wrapped


# ----- cases --------------------------------------------------------------------------------


def vanishing_sigmoid() -> Setup:
    model = MLP(20, 32, nn.Sigmoid)
    return Setup(model, sgd(model, 0.1), vectors, steps=30)


def exploding_init() -> Setup:
    model = MLP(16, 32)
    with torch.no_grad():  # twice He's scale, no normalization: each layer doubles the signal
        for fc in model.fcs:
            fc.weight.normal_(0.0, 2 * math.sqrt(2 / fc.in_features))
            fc.bias.zero_()
    return Setup(model, sgd(model, 1e-9), vectors, steps=30)


def dead_relu(functional: bool) -> Callable[[], Setup]:
    def build() -> Setup:
        model = MLP(6, 32, functional=F.relu if functional else None)
        with torch.no_grad():
            model.fcs[3].bias.fill_(-50.0)  # the 4th Linear's ReLU never fires
        return Setup(model, sgd(model, 0.1), vectors, steps=30)

    return build


def divergence() -> Setup:
    model = MLP(4, 32)
    teacher = torch.randn(INPUTS, CLASSES, generator=torch.Generator().manual_seed(7))

    def batch(step):  # regression on a linear teacher's outputs
        x, _ = vectors(step)
        return x, x @ teacher

    return Setup(model, sgd(model, 3.0), batch, steps=20, loss=F.mse_loss)


class ExpLinear(nn.Linear):
    """A Linear followed by exp (a log-scale output, say): it overflows on large inputs."""

    def forward(self, x):
        return torch.exp(super().forward(x))


def inf_unscheduled() -> Setup:
    model = MLP(6, 32)
    model.fcs[2] = ExpLinear(32, 32)

    def batch(step):
        x, y = vectors(step)
        if step == 7:  # one outlier row at a step the schedule (every 5) does not record
            x[0] *= 1e4
        return x, y

    return Setup(model, sgd(model, 0.01), batch, steps=20, every=5)


def branch(mode: str) -> Callable[[], Setup]:
    def build() -> Setup:
        model = WithBranch(mode)
        return Setup(model, sgd(model, 0.1), vectors, steps=20)

    return build


def frozen_layer() -> Setup:
    model = MLP(5, 32)
    model.fcs[2].requires_grad_(False)
    return Setup(model, sgd(model, 0.1), vectors, steps=20)


def transformer(pre_norm: bool) -> Callable[[], Setup]:
    def build() -> Setup:
        model = TinyTransformer(24, pre_norm)
        return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-3), sequences, steps=20)

    return build


def batchnorm_mlp() -> Setup:
    model = MLP(8, 64, batchnorm=True)
    return Setup(model, sgd(model, 0.1, momentum=0.9), vectors, steps=30)


def resnet20() -> Setup:
    model = create_model("resnet20")
    return Setup(model, sgd(model, 0.1, momentum=0.9), images, steps=15)


CASES = (
    Case(
        "vanishing_sigmoid",
        "20-layer sigmoid MLP",
        seeded(vanishing_sigmoid),
        (("signal_vanishing_depth", None),),
    ),
    Case(
        "exploding_init",
        "16-layer ReLU MLP, init 2x He's scale, no normalization",
        seeded(exploding_init),
        (("signal_exploding_depth", None),),
    ),
    Case(
        "dead_relu_module",
        "6-layer MLP, nn.ReLU, 4th Linear's bias at -50",
        seeded(dead_relu(functional=False)),
        (("dead", "fcs.3"), ("gradient_blocked", "fcs.3")),
    ),
    Case(
        "dead_relu_functional",
        "the same with F.relu",
        seeded(dead_relu(functional=True)),
        (("dead", "fcs.3"), ("gradient_blocked", "fcs.3")),
    ),
    Case(
        "divergence",
        "4-layer ReLU MLP regression, SGD at lr 3",
        seeded(divergence),
        (("nonfinite|exploding_steps", None),),
    ),
    Case(
        "inf_unscheduled_step",
        "6-layer MLP whose 3rd Linear ends in exp: an outlier row at step 7 overflows it, "
        "recorded every 5 steps",
        seeded(inf_unscheduled),
        (("nonfinite", "fcs.2"),),
        step=7,
    ),
    Case(
        "unused_branch",
        "an auxiliary head computed but left out of the loss",
        seeded(branch("branch")),
        (("gradient_blocked", "aux.2"),),
    ),
    Case(
        "detached_trunk",
        "a trunk whose features reach the head through .detach()",
        seeded(branch("detach")),
        (("gradient_blocked", "trunk.fcs.2"),),
    ),
    Case(
        "frozen_layer",
        "5-layer MLP, 3rd Linear with requires_grad=False",
        seeded(frozen_layer),
        (("no_gradient", "fcs.2"),),
    ),
    Case(
        "post_ln_transformer",
        "24-layer post-LN transformer, Adam 1e-3 without warm-up",
        seeded(transformer(pre_norm=False)),
        (("signal_vanishing_depth", None),),
    ),
    Case(
        "pre_ln_transformer",
        "the same, pre-LN (healthy control)",
        seeded(transformer(pre_norm=True)),
    ),
    Case(
        "batchnorm_mlp",
        "8-layer ReLU MLP with BatchNorm (healthy control)",
        seeded(batchnorm_mlp),
    ),
    Case("resnet20", "CIFAR ResNet-20 on 8x8 images (healthy control)", seeded(resnet20)),
)


# ----- running ------------------------------------------------------------------------------


def record(setup: Setup, path: Path) -> None:
    """Train the setup, recording every `setup.every` steps into `path`."""
    model, opt = setup.model, setup.optimizer
    with gradscope.attach(model, path, optimizer=opt, every=setup.every, overwrite=True):
        for step in range(setup.steps):
            x, y = setup.batch(step)
            loss = setup.loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()


def run_case(case: Case, folder: Path) -> Row:
    """Record, diagnose and judge one case."""
    expected = ", ".join(f"{k} at {layer}" if layer else k for k, layer in case.expected)
    expected = expected.replace("|", " or ") + (f" at step {case.step}" if case.step else "")
    row = Row(case.name, expected or "no finding")
    start = time.perf_counter()
    path = folder / f"{case.name}.h5"
    record(case.build(), path)
    with gradscope.open_run(path) as run:
        result = diagnose(run)
    row.seconds = time.perf_counter() - start
    row.text = result.to_text()
    found = [(f.kind, f.layer, f.step) for f in result.findings]
    row.found = sorted({f"{kind} at {layer}" if layer else kind for kind, layer, _ in found})
    if not case.expected:
        row.verdict = "right" if not found else "wrong"
    else:
        hit = all(
            any(k in kinds.split("|") and (layer is None or layer == at) for k, at, _ in found)
            for kinds, layer in case.expected
        )
        if hit and case.step is not None:
            kinds, layer = case.expected[0]
            steps = {s for k, at, s in found if k in kinds.split("|") and layer in (None, at)}
            hit = case.step in steps
        row.verdict = "right" if hit else "wrong"
    return row


def table(rows: list[Row]) -> str:
    """The rows as a text table, and how many are right."""
    lines = [f"{'case':<22} {'verdict':<8} {'s':>5}  expected / found"]
    for row in rows:
        found = "; ".join(row.found) or "no finding"
        lines.append(f"{row.case:<22} {row.verdict:<8} {row.seconds:5.1f}  {row.expected}")
        lines.append(f"{'':<22} {'':<8} {'':>5}  found: {found}")
    right = sum(r.verdict == "right" for r in rows)
    lines.append(f"{right} of {len(rows)} cases right")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=[c.name for c in CASES], help="cases to run")
    parser.add_argument("--keep", metavar="DIR", help="keep the run files in DIR")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--verbose", action="store_true", help="print each diagnosis")
    return parser


def run_cases(names=None, folder: Path | None = None) -> list[Row]:
    """Run the named cases (all by default) on one thread, run files in `folder`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            where = Path(folder) if folder is not None else Path(scratch)
            where.mkdir(parents=True, exist_ok=True)
            return [run_case(c, where) for c in CASES if names is None or c.name in names]
    finally:
        torch.set_num_threads(threads)


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    rows = run_cases(args.only, args.keep)
    if args.verbose:
        for row in rows:
            print(f"--- {row.case}\n{row.text}\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([row.__dict__ for row in rows], indent=1))
    return 1 if any(row.verdict == "wrong" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""What the large-model instruments cost: the gradient noise scale (and the activation outlier
statistics), recorded against the same recorder without them and against bare twins.

    python benchmarks/instruments.py                  # ResNet-56 batch 128 and a 20M GPT-2
    python benchmarks/instruments.py --skip-gpt2 --steps 10     # ResNet-56 only, a quick look
    python benchmarks/instruments.py --micro 4        # 4 micro-batches a step: a noise scale
    python benchmarks/instruments.py --batch 4 --tokens 16 --gpt2-width 64 --steps 2  # it runs

Goal (issue 29): at every=10, within 1.01x on the CPU for ResNet-56 at batch 128 and for a
GPT-2-like model of about 20M parameters (the integration tests' tiny GPT-2 scaled up: 6
layers of width 512, byte vocabulary; 8 sequences of 128 tokens a step). Under DDP on 2 ranks:
`python benchmarks/distributed.py` ("recorded / recorded without the noise scale").

The variants of each model, stepped in turn on the same preloaded batch as in overhead.py
(the ratios are medians over rounds of the variant's step time over the bare twin's in that
round, with a 95% interval): the bare twin and its A/A control, then at every=10 and every=1
every statistic ("all stats") and every statistic but the new ones ("without the new
instruments"); `instruments / without` is the paired ratio of those two, what the new
statistics add to a recorder that is on anyway. With `--micro K` each step is K micro-batches
(gradient accumulation), so the noise scale has K small batches to measure; with one (the
default for ResNet-56) its hooks still run on every recorded step, and it records no value.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import overhead  # benchmarks/overhead.py: the variants, rounds and report
import torch
import torch.nn.functional as F

import gradscope
from gradscope.models import create_model
from gradscope.recorder import ALL_STATS, GNS_STATS
from gradscope.store import latest_noise_scale

# the instruments of issue 29: the noise scale and the activation outliers
NEW_STATS = (*GNS_STATS, "act_kurtosis", "act_max_rms", "act_outlier_channel")
OLD_STATS = [s for s in ALL_STATS if s not in NEW_STATS]


class Stepper(overhead.Variant):
    """A variant whose step is `micro` micro-batches (each loss divided by their number)."""

    def __init__(self, name, model, setup=None, micro: int = 1, loss=None):
        self.micro = micro
        self.loss = loss or _classification
        super().__init__(name, model, setup)

    def step(self, x, y) -> None:
        faults = overhead._minor_faults()
        start = time.perf_counter()
        for xs, ys in zip(x.chunk(self.micro), y.chunk(self.micro), strict=True):
            (self.loss(self.model, xs, ys) / self.micro).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - start)
        self.faults.append(overhead._minor_faults() - faults)


def _classification(model, x, y):
    return F.cross_entropy(model(x), y)


def _language_model(model, x, y):
    return model(input_ids=x, labels=y).loss


def variants(base, folder: Path, micro: int, loss=None) -> list[Stepper]:
    """Bare, A/A, then every=10 and every=1 with all stats and without the new ones."""
    out = [
        Stepper("bare", copy.deepcopy(base), micro=micro, loss=loss),
        Stepper("bare again (A/A control)", copy.deepcopy(base), micro=micro, loss=loss),
    ]
    for every in (10, 1):
        for name, stats in (("all stats", None), ("without the new instruments", OLD_STATS)):
            setup = overhead.recorded(folder, every=every, stats=stats)
            out.append(Stepper(f"{name}, every={every}", copy.deepcopy(base), setup, micro, loss))
    return out


def instruments_ratio(steppers: list[Stepper]) -> dict:
    """Per `every`: the paired ratio (median over rounds, 95% interval) of all stats over the
    recorder without the new instruments."""
    by_name = {s.name: s for s in steppers}
    out = {}
    for every in (10, 1):
        full = by_name[f"all stats, every={every}"].times
        without = by_name[f"without the new instruments, every={every}"].times
        ratios = [a / b for a, b in zip(full, without, strict=True)]
        low, high = overhead.median_interval(ratios)
        out[f"every={every}"] = {"paired": statistics.median(ratios), "interval": [low, high]}
        print(
            f"instruments / without, every={every}: {statistics.median(ratios):.3f} "
            f"(95% interval {low:.3f}-{high:.3f})"
        )
    return out


def noise_scale_line(steppers: list[Stepper]) -> None:
    """What the recorded noise scale was (the model's, over the run's last records); closes
    the recorders."""
    for stepper in steppers:
        if stepper.recorder is not None:
            stepper.recorder.close()
    full = next(s for s in steppers if s.name == "all stats, every=1")
    with gradscope.open_run(full.recorder.path) as run:
        try:
            latest = latest_noise_scale(run)
        except gradscope.UsageError:
            print("noise scale: none (one small batch a step; --micro K measures one)")
            return
        value = f"{latest.value:.4g} rows" if latest.value == latest.value else "not resolved"
        print(
            f"noise scale recorded: {value} over {latest.records} records "
            f"(batch {latest.batch:.0f} in small batches of {latest.small_batch:.4g})"
        )


def resnet56(args, folder: Path) -> dict:
    torch.manual_seed(0)
    base = create_model("resnet56")
    x, y = overhead.batch(args.batch)
    steppers = variants(base, folder, args.micro)
    overhead.run_rounds(steppers, x, y, args.steps, args.warmup)
    title = f"ResNet-56, batch {args.batch} in {args.micro} micro-batches, {overhead.where()}"
    overhead.report(steppers, title)
    ratios = instruments_ratio(steppers)
    noise_scale_line(steppers)
    return {"title": title, "instruments": ratios, **overhead.RESULTS[-1]}


def gpt2(args, folder: Path) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=256,  # bytes, as examples/04_hf_trainer.py
        n_positions=args.tokens,
        n_embd=args.gpt2_width,
        n_layer=6,
        n_head=8,
        bos_token_id=0,  # NUL, as examples/04_hf_trainer.py
        eos_token_id=0,
    )
    base = GPT2LMHeadModel(config)
    params = sum(p.numel() for p in base.parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (args.sequences, args.tokens), generator=g)
    steppers = variants(base, folder, args.gpt2_micro, loss=_language_model)
    overhead.run_rounds(steppers, x, x, args.steps, args.warmup)
    title = (
        f"GPT-2 ({params / 1e6:.1f}M parameters), {args.sequences} x {args.tokens} tokens in "
        f"{args.gpt2_micro} micro-batches, {overhead.where()}"
    )
    overhead.report(steppers, title)
    ratios = instruments_ratio(steppers)
    noise_scale_line(steppers)
    return {"title": title, "parameters": params, "instruments": ratios, **overhead.RESULTS[-1]}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed rounds per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--batch", type=int, default=128, help="ResNet-56 images a step")
    parser.add_argument("--micro", type=int, default=1, help="ResNet-56 micro-batches a step")
    parser.add_argument("--sequences", type=int, default=8, help="GPT-2 sequences a step")
    parser.add_argument("--tokens", type=int, default=128, help="GPT-2 tokens a sequence")
    parser.add_argument("--gpt2-width", type=int, default=512, help="GPT-2 n_embd")
    parser.add_argument("--gpt2-micro", type=int, default=2, help="GPT-2 micro-batches a step")
    parser.add_argument("--skip-resnet", action="store_true", help="only the GPT-2")
    parser.add_argument("--skip-gpt2", action="store_true", help="only ResNet-56")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, gradscope {gradscope.__version__}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_resnet:
            results["resnet56"] = resnet56(args, Path(tmp) / "resnet56")
        if not args.skip_gpt2:
            results["gpt2"] = gpt2(args, Path(tmp) / "gpt2")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()

"""DDP, FSDP2 and FSDP1 on two real gloo ranks: every statistic of rank 0's file against a
one-process float64 autograd reference on the concatenated batch."""

import contextlib
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.recorder import ALL_STATS
from gradscope.store import GNS_STATS, noise_estimates
from tests import noise_population as population
from tests.ranks import init_gloo, rendezvous_file, run_ranks
from tests.reference import (
    ReferenceProbe,
    act_grad_reference,
    act_reference,
    gns_reference,
    grad_reference,
    unit_reference,
    weight_copy,
    weight_reference,
)

WORLD = 2
NOISE_STEPS, NOISE_MICRO, NOISE_ROWS = 120, 2, 8  # DDP's small batches: 2 ranks x 2 x 8 rows
ROWS = 4  # per rank and micro-batch
LAYERS = ["embed", "act", "hidden", "head"]  # the plain model's names, in depth order
WATCH = ["embed", "hidden", "head", nn.ReLU]
LR, MOMENTUM = 0.1, 0.9
# name: (wrapper, every, steps, batch_sample, micro-batches per step, all_ranks)
PHASES = {
    "ddp-every1": ("ddp", 1, 2, None, 1, False),
    "ddp-every2": ("ddp", 2, 3, 2, 1, False),
    "ddp-accumulate": ("ddp", 1, 2, None, 2, False),
    "ddp-all-ranks": ("ddp", 1, 1, None, 1, True),
    "fsdp2-every1": ("fsdp2", 1, 2, None, 1, False),
    "fsdp2-every2": ("fsdp2", 2, 3, 2, 1, False),
    "fsdp1-every1": ("fsdp1", 1, 2, None, 1, False),
    "fsdp1-every2": ("fsdp1", 2, 3, 2, 1, False),
    "fsdp1-accumulate": ("fsdp1", 1, 1, None, 2, False),
}


class Net(nn.Module):
    """Odd row counts: FSDP shards `hidden` unevenly and leaves rank 1 no rows of `head`."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.act = nn.ReLU()
        self.hidden = nn.Linear(8, 3)
        self.head = nn.Linear(3, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.hidden(self.act(self.embed(x)))))


def batch(step: int, micro: int, rank: int):
    g = torch.Generator().manual_seed(1000 * step + 10 * micro + rank)
    return torch.randn(ROWS, 5, generator=g), torch.randn(ROWS, 1, generator=g)


def wrap(kind: str, model: nn.Module) -> nn.Module:
    if kind == "ddp":
        return nn.parallel.DistributedDataParallel(model)
    if kind == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.embed)
        fully_shard(model.head)
        return fully_shard(model)  # `hidden` is sharded with the root's parameters
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return FullyShardedDataParallel(
        model,
        use_orig_params=True,
        device_id=torch.device("cpu"),
        auto_wrap_policy=ModuleWrapPolicy({nn.Linear}),
    )


def no_sync(kind: str, model):
    if kind == "fsdp2":
        raise AssertionError("FSDP2 accumulates with set_requires_gradient_sync")
    return model.no_sync()


def _worker(rank: int, rendezvous: str, folder: str) -> None:
    init_gloo(rank, WORLD, rendezvous)
    torch.set_num_threads(1)
    reductions = {}
    for name, (kind, every, steps, batch_sample, micros, all_ranks) in PHASES.items():
        torch.manual_seed(0)
        model = wrap(kind, Net())
        opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        rec = gradscope.attach(
            model,
            f"{folder}/{name}.h5",
            optimizer=opt,
            every=every,
            layers=WATCH,
            batch_sample=batch_sample,
            all_ranks=all_ranks,
        )
        calls = []
        counted = _count_all_reduces(calls)
        per_step = []
        for step in range(steps):
            opt.zero_grad()
            for micro in range(micros):
                x, y = batch(step, micro, rank)
                if micro < micros - 1:
                    with no_sync(kind, model):
                        F.mse_loss(model(x), y).backward()
                else:
                    F.mse_loss(model(x), y).backward()
            before = len(calls)
            opt.step()
            per_step.append(len(calls) - before)
        counted.undo()
        rec.close()
        reductions[name] = per_step
        dist.barrier()
    _record_noise(rank, folder)
    errors = {name: _attach_error(make, rank, folder) for name, make in ATTACH_ERRORS.items()}
    steps = _overflow_on_rank_1(rank, folder)
    with open(f"{folder}/rank{rank}.json", "w") as f:
        json.dump({"all_reduces": reductions, "errors": errors, "steps": steps}, f)
    dist.destroy_process_group()


def _record_noise(rank: int, folder: str) -> None:
    """The population net under DDP: each rank draws NOISE_MICRO micro-batches of NOISE_ROWS
    examples a step (accumulated under no_sync), as many small batches as one process with
    WORLD x NOISE_MICRO micro-batches; lr=0, so the true values stay fixed."""
    model = nn.parallel.DistributedDataParallel(population.population_net())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with gradscope.attach(model, f"{folder}/ddp-noise.h5", optimizer=opt, stats=list(GNS_STATS)):
        for step in range(NOISE_STEPS):
            for micro in range(NOISE_MICRO):
                x, y = population.draw(NOISE_ROWS, step, micro, rank)
                with model.no_sync() if micro < NOISE_MICRO - 1 else contextlib.nullcontext():
                    (population.loss(model, x, y) / NOISE_MICRO).backward()
            opt.step()
            opt.zero_grad()


OVERFLOW_AT = 2  # the step at which rank 1's rows overflow the first layer (never scheduled)


def _overflow_on_rank_1(rank: int, folder: str) -> int:
    """DDP, recorded every=50: at step OVERFLOW_AT rank 1's rows are 1e38 times too large
    (and positive, as `embed`'s weights are here), so `embed` overflows on rank 1 alone; every
    rank replays. Returns the steps each rank saw."""
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.embed.weight.fill_(1.0)
    model = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the trip's, on rank 0
        with gradscope.attach(model, f"{folder}/overflow.h5", optimizer=opt, every=50) as rec:
            for step in range(OVERFLOW_AT + 2):
                x, y = batch(step, 0, rank)
                if rank == 1 and step == OVERFLOW_AT:
                    x = x.abs() * 1e38
                F.mse_loss(model(x), y).backward()
                opt.step()
                opt.zero_grad()
            return rec.current_step


def _tensor_parallel(rank, folder):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    mesh = init_device_mesh("cpu", (WORLD,))
    return parallelize_module(Net(), mesh, {"embed": ColwiseParallel()}), f"{folder}/tp.h5", {}


def _flat_parameters(rank, folder):
    from torch.distributed.fsdp import FullyShardedDataParallel

    model = FullyShardedDataParallel(Net(), device_id=torch.device("cpu"))
    return model, f"{folder}/flat.h5", {}


def _rank_zero_file_exists(rank, folder):
    if rank == 0:
        open(f"{folder}/exists.h5", "w").close()
    dist.barrier()
    return nn.parallel.DistributedDataParallel(Net()), f"{folder}/exists.h5", {}


def _ranks_watch_differently(rank, folder):
    layers = ["embed"] if rank == 0 else ["head"]
    model = nn.parallel.DistributedDataParallel(Net())
    return model, f"{folder}/differ.h5", {"layers": layers}


ATTACH_ERRORS = {
    "tensor parallel": _tensor_parallel,
    "flat parameters": _flat_parameters,
    "rank 0's file exists": _rank_zero_file_exists,
    "ranks watch differently": _ranks_watch_differently,
}


def _attach_error(make, rank, folder) -> str:
    """The error gradscope.attach raises on this rank ("" if none)."""
    model, path, kwargs = make(rank, folder)
    try:
        gradscope.attach(model, path, **kwargs).close()
    except gradscope.GradscopeError as e:
        return f"{type(e).__name__}: {e}"
    return ""


class _count_all_reduces:
    """Counts torch.distributed.all_reduce calls (DDP's own reductions run in C++)."""

    def __init__(self, calls: list):
        self.original = dist.all_reduce

        def counting(*args, **kwargs):
            calls.append(1)
            return self.original(*args, **kwargs)

        dist.all_reduce = counting

    def undo(self):
        dist.all_reduce = self.original


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Every phase recorded once by two gloo ranks (one spawn for the whole module)."""
    folder = tmp_path_factory.mktemp("ranks")
    run_ranks(_worker, args=(rendezvous_file(folder), str(folder)), world=WORLD)
    return folder


def reference(phase: str) -> dict[int, dict[str, list[float]]]:
    """One process, float64, the ranks' rows concatenated: step -> stat -> value per layer."""
    _, every, steps, batch_sample, micros, _ = PHASES[phase]
    torch.manual_seed(0)
    model = Net().double()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    modules = {name: getattr(model, name) for name in LAYERS}
    probe = ReferenceProbe(modules)
    records = {}
    for step in range(steps):
        probe.clear()
        opt.zero_grad()
        changes = []  # each rank's gradient of each micro-batch: the small batches
        for micro in range(micros):
            parts = [batch(step, micro, rank) for rank in range(WORLD)]
            changes += [rank_gradient(model, x, y) for x, y in parts]
            x = torch.cat([p[0] for p in parts]).double()
            y = torch.cat([p[1] for p in parts]).double()
            F.mse_loss(model(x), y).backward()
        noise = gns_reference(modules, changes, [ROWS] * len(changes), weight=1 / WORLD)
        before = {name: weight_copy(m) for name, m in modules.items()}
        grads = {name: grad_reference(m) for name, m in modules.items()}
        opt.step()
        if step % every:
            continue
        stats = {}
        for name, module in modules.items():
            # each rank's first batch_sample rows of each call
            calls = [copy for call in probe.outputs[name] for _, copy in call]
            per_rank = [[(None, rows)] for copy in calls for rows in copy.chunk(WORLD)]
            sampled_units = unit_reference(per_rank, batch_sample, module)
            stats[name] = {
                **grads[name],
                **weight_reference(before[name], module),
                **act_reference(per_rank, batch_sample),
                "act_pos_frac": sampled_units["act_pos_frac"],
                "act_outlier_channel": sampled_units["act_outlier_channel"],
                "act_grad_norm": act_grad_reference(probe.outputs[name]),
                **noise[name],
                "act_grad_zero_frac": unit_reference(probe.outputs[name], None, module)[
                    "act_grad_zero_frac"
                ],
            }
        records[step] = {s: [stats[name][s] for name in LAYERS] for s in ALL_STATS}
    probe.remove()
    return records


def rank_gradient(model: nn.Module, x, y) -> dict[int, torch.Tensor]:
    """The float64 gradient of one rank's loss on its rows, by the ids of `model`'s
    parameters (computed on a copy: the model's own gradients and hooks are left alone)."""
    copy = Net().double()
    copy.load_state_dict(model.state_dict())
    F.mse_loss(copy(x.double()), y.double()).backward()
    return {id(p): q.grad for p, q in zip(model.parameters(), copy.parameters(), strict=True)}


@pytest.mark.parametrize("phase", [p for p in PHASES if not PHASES[p][5]])
def test_rank_zero_records_the_global_batch(recorded, phase):
    want = reference(phase)
    with gradscope.open_run(recorded / f"{phase}.h5") as run:
        assert list(run.layers["name"]) == LAYERS
        assert list(run.layers["type"]) == ["Linear", "ReLU", "Linear", "Linear"]
        assert list(run.layers["params"]) == [48, 0, 27, 4]  # whole layers, all shards
        assert list(run.steps) == sorted(want)
        assert run.attrs["world_size"] == WORLD
        # FSDP1 leaves the gradient noise scale out (its attach warns)
        fsdp1 = phase.startswith("fsdp1")
        assert run.stats == [s for s in ALL_STATS if not (fsdp1 and s.startswith("gns_"))]
        for i, step in enumerate(run.steps):
            for stat in run.stats:
                np.testing.assert_allclose(
                    run.stat(stat)[i],
                    want[step][stat],
                    rtol=2e-5,
                    atol=1e-7,
                    err_msg=f"{phase} step {step} {stat}",
                )
    assert not (recorded / f"{phase}.rank1.h5").exists()


def test_ddp_all_ranks_keeps_each_ranks_local_statistics(recorded):
    want = reference("ddp-all-ranks")[0]
    torch.manual_seed(0)
    model = Net().double()
    probe = ReferenceProbe({name: getattr(model, name) for name in LAYERS})
    x, y = batch(0, 0, 1)
    F.mse_loss(model(x.double()), y.double()).backward()  # rank 1 alone, its own loss
    with gradscope.open_run(recorded / "ddp-all-ranks.rank1.h5") as run:
        assert run.attrs["rank"] == 1 and run.attrs["world_size"] == WORLD
        for i, name in enumerate(LAYERS):
            local = act_reference(probe.outputs[name], None)
            local |= unit_reference(probe.outputs[name], None, getattr(model, name))
            for stat, value in local.items():
                assert math.isclose(run.stat(stat)[0, i], value, rel_tol=2e-5, abs_tol=1e-7)
            norm = act_grad_reference(probe.outputs[name])
            assert math.isclose(run.stat("act_grad_norm")[0, i], norm, rel_tol=2e-5)
            # DDP: every rank holds the averaged gradient, the global one
            assert math.isclose(
                run.stat("grad_norm")[0, i], want["grad_norm"][i], rel_tol=2e-5
            ) or (math.isnan(want["grad_norm"][i]) and math.isnan(run.stat("grad_norm")[0, i]))
    with gradscope.open_run(recorded / "ddp-all-ranks.h5") as run:
        np.testing.assert_allclose(run.stat("act_mean")[0], want["act_mean"], rtol=2e-5)
    assert (recorded / "ddp-all-ranks.rank0.h5").exists()


def test_unit_flags_are_or_ed_across_ranks(recorded):
    # At step 0, of embed's 8 units 3 get no gradient from rank 0's rows and 2 from rank 1's,
    # but only one (unit 3) from either: each rank alone would count 3/8 and 2/8.
    torch.manual_seed(0)
    model = Net()
    local = []
    for rank in range(WORLD):
        probe = ReferenceProbe({"embed": model.embed})
        x, y = batch(0, 0, rank)
        F.mse_loss(model(x), y).backward()
        local.append(unit_reference(probe.outputs["embed"], None, model.embed))
        probe.remove()
        model.zero_grad()
    assert [r["act_grad_zero_frac"] for r in local] == [3 / 8, 2 / 8]
    assert [r["act_pos_frac"] for r in local] == [5 / 8, 6 / 8]
    with gradscope.open_run(recorded / "ddp-every1.h5") as run:
        assert run.stat("act_grad_zero_frac")[0, 0] == 1 / 8
        assert run.stat("act_pos_frac")[0, 0] == 7 / 8


def test_collectives_only_on_record_steps(recorded):
    counts = json.loads((recorded / "rank0.json").read_text())["all_reduces"]
    # every=2 under DDP: a SUM, a MAX and the activation spread's SUM at steps 0 and 2, and at
    # every step the flight recorder's flag (a MAX of one number)
    assert counts["ddp-every2"] == [4, 1, 4]
    assert counts["ddp-every1"] == [4, 4]


def test_every_rank_replays_a_trip_and_the_finding_names_the_rank(recorded):
    for rank in range(WORLD):  # every rank went on after the trip, in step
        assert json.loads((recorded / f"rank{rank}.json").read_text())["steps"] == OVERFLOW_AT + 2
    with gradscope.open_run(recorded / "overflow.h5") as run:
        origin = run.events.iloc[0]
        assert list(run.steps) == [0, OVERFLOW_AT]  # the trip step recorded in full
    assert (origin["step"], origin["phase"], origin["layer"]) == (OVERFLOW_AT, "forward", "embed")
    assert (origin["rank"], origin["op"], origin["op_dtype"]) == (1, "aten.addmm", "float32")
    assert origin["op_absmax"] > 1e37  # rank 1's rows, as the op got them
    assert origin["message"].startswith(
        f"step {OVERFLOW_AT} on rank 1: first non-finite value in the forward pass of embed "
        "(Linear), aten.addmm, input absmax "
    )


@pytest.mark.parametrize(
    "case, rank0, rank1",
    [
        ("tensor parallel", "DTensor with placements (Shard(dim=0),)", "outside fully_shard"),
        ("flat parameters", "use_orig_params=True", "use_orig_params=True"),
        ("rank 0's file exists", "RunFileError: ", "failed on rank 0 (RunFileError"),
        ("ranks watch differently", "rank 1 attaches differently", "attaches differently"),
    ],
)
def test_attach_fails_on_every_rank_with_the_reason(recorded, case, rank0, rank1):
    errors = [json.loads((recorded / f"rank{r}.json").read_text())["errors"] for r in range(2)]
    assert rank0 in errors[0][case]
    assert rank1 in errors[1][case]


def test_ddp_noise_scale_matches_the_truth_and_gradient_accumulation(recorded, tmp_path):
    # The same small batches (4 of 8 examples a step) as ranks x micro-batches under DDP and as
    # micro-batches in one process: both estimate the population's true values, and agree.
    truth = population.true_noise(population.population_net())
    single = population.train_with_accumulation(
        tmp_path / "single.h5", NOISE_STEPS, WORLD * NOISE_MICRO, NOISE_ROWS, stats=list(GNS_STATS)
    )
    with gradscope.open_run(recorded / "ddp-noise.h5") as run:
        ddp, one = noise_estimates(run), noise_estimates(single)
        np.testing.assert_array_equal(ddp.batch, WORLD * NOISE_MICRO * NOISE_ROWS)
        np.testing.assert_array_equal(ddp.small_batch, NOISE_ROWS)
        for i, layer in enumerate(population.LAYERS):
            for field, want in zip(("grad_sq", "trace"), truth[layer], strict=True):
                a, error_a = population.mean_and_error(getattr(ddp, field)[:, i])
                b, error_b = population.mean_and_error(getattr(one, field)[:, i])
                assert abs(a - want) < 4 * error_a, (layer, field, a, error_a, want)
                assert abs(a - b) < 4 * math.hypot(error_a, error_b), (layer, field, a, b)

"""The gradient noise scale: estimates against the true |G|^2 and tr(Sigma) of a population
(per-example gradients from torch.func), the reader's windows and groups, and the edge cases
of the recorder's small batches. Exact per-step sums against plain autograd are checked in
tests/test_recorder.py (every model there), tests/test_act_sums.py (the device path) and
tests/test_distributed_recorder.py (DDP, FSDP2)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradscope
from gradscope.store import GNS_STATS, MODEL_COLUMN, noise_estimates
from tests.noise_population import (
    LAYERS,
    draw,
    loss,
    mean_and_error,
    population_net,
    train_with_accumulation,
    true_noise,
)

STEPS, MICRO, ROWS = 120, 4, 8  # 4 micro-batches of 8 drawn examples a step: B = 32, b = 8
SIGMAS = 4  # an estimate farther from the truth than this many standard errors fails


@pytest.fixture(scope="module")
def accumulated(tmp_path_factory, one_thread):
    """A run of the population net with gradient accumulation, and the true values."""
    path = tmp_path_factory.mktemp("gns") / "accumulated.h5"
    run = train_with_accumulation(path, STEPS, MICRO, ROWS, stats=list(GNS_STATS))
    return run, true_noise(population_net())


def test_estimates_match_the_true_gradient_and_noise_per_layer(accumulated):
    run, truth = accumulated
    estimates = noise_estimates(run)
    assert estimates.layers == list(LAYERS)
    np.testing.assert_array_equal(estimates.batch, MICRO * ROWS)
    np.testing.assert_array_equal(estimates.small_batch, ROWS)
    for i, layer in enumerate(LAYERS):
        pairs = zip((estimates.grad_sq[:, i], estimates.trace[:, i]), truth[layer], strict=True)
        for values, want in pairs:
            mean, error = mean_and_error(values)
            assert abs(mean - want) < SIGMAS * error, (layer, mean, error, want)
            assert error < 0.1 * want  # the test has the power to see a wrong factor


def test_noise_scale_divides_the_window_means(accumulated):
    run, truth = accumulated
    estimates = noise_estimates(run)
    frame = run.noise_scale(window=STEPS)
    assert list(frame.columns) == [*LAYERS, MODEL_COLUMN]
    assert frame.index.name == "step" and list(frame.index) == list(run.steps)
    last = frame.iloc[-1]
    for i, layer in enumerate(LAYERS):
        want = estimates.trace[:, i].mean() / estimates.grad_sq[:, i].mean()
        assert last[layer] == pytest.approx(want, rel=1e-12)
        assert last[layer] == pytest.approx(truth[layer][1] / truth[layer][0], rel=0.1)
    model = estimates.trace.sum(1).mean() / estimates.grad_sq.sum(1).mean()
    assert last[MODEL_COLUMN] == pytest.approx(model, rel=1e-12)
    # a window of 5 records: the means over the record and the 4 before it
    short = run.noise_scale(window=5)
    at = 10
    window = slice(at - 4, at + 1)
    want = estimates.trace[window, 1].mean() / estimates.grad_sq[window, 1].mean()
    assert short.iloc[at][LAYERS[1]] == pytest.approx(want, rel=1e-12)
    first = estimates.trace[0, 1] / estimates.grad_sq[0, 1]
    assert short.iloc[0][LAYERS[1]] == pytest.approx(first if first > 0 else np.nan, nan_ok=True)
    groups = gradscope.store.noise_scale(run, STEPS, groups={"all": list(LAYERS)})
    assert list(groups.columns) == ["all", MODEL_COLUMN]
    assert groups["all"].iloc[-1] == pytest.approx(model, rel=1e-12)
    for bad in (0, 2.5, True):
        with pytest.raises(gradscope.UsageError, match="window"):
            run.noise_scale(window=bad)


def test_the_noise_scale_is_free_of_the_loss_scale(tmp_path, one_thread):
    # Micro-batch losses not divided by their number, or multiplied by an AMP loss scale:
    # |G|^2 and tr(Sigma) are of the loss backpropagated, their ratio the same.
    runs = {
        scale: train_with_accumulation(
            tmp_path / f"{scale}.h5", 12, MICRO, ROWS, scale=scale, stats=list(GNS_STATS)
        )
        for scale in (1 / MICRO, 1.0, 1024.0)
    }
    base = noise_estimates(runs[1 / MICRO])
    for scale, run in runs.items():
        factor = (scale * MICRO) ** 2
        estimates = noise_estimates(run)
        np.testing.assert_allclose(estimates.grad_sq, factor * base.grad_sq, rtol=1e-4)
        np.testing.assert_allclose(estimates.trace, factor * base.trace, rtol=1e-4)
        np.testing.assert_allclose(
            run.noise_scale(window=12), runs[1 / MICRO].noise_scale(window=12), rtol=1e-4
        )


def test_one_small_batch_a_step_has_no_noise_scale(tmp_path):
    run = train_with_accumulation(tmp_path / "one.h5", 2, 1, ROWS)
    assert np.isnan(run.stat("gns_small_sq")).all() and np.isnan(run.stat("gns_small_batch")).all()
    np.testing.assert_allclose(run.stat("gns_large_sq"), run.stat("grad_norm") ** 2, rtol=1e-5)
    np.testing.assert_array_equal(run.stat("gns_large_batch"), ROWS)
    with pytest.raises(gradscope.UsageError, match="gradient accumulation .* or data parallelism"):
        run.noise_scale()


def test_zero_grad_drops_the_small_batches_whose_gradients_it_wipes(tmp_path):
    # A backward pass whose gradients are zeroed before the update (an AMP step the scaler
    # skipped) is no small batch of the step that follows.
    net = population_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    with gradscope.attach(net, tmp_path / "z.h5", optimizer=opt, stats=list(GNS_STATS)):
        loss(net, *draw(3, 0, 9)).backward()
        opt.zero_grad()
        for micro, rows in enumerate((5, 7)):
            loss(net, *draw(rows, 0, micro)).backward()
        opt.step()
    run = gradscope.open_run(tmp_path / "z.h5")
    assert list(run.stat("gns_large_batch")[0]) == [12, 12]
    assert run.stat("gns_small_batch")[0, 0] == pytest.approx(2 / (1 / 5 + 1 / 7))


class FrozenFront(nn.Module):
    """A frozen first layer, then a shared layer called twice, and a tied output layer."""

    def __init__(self):
        super().__init__()
        self.front = nn.Linear(4, 6).requires_grad_(False)
        self.shared = nn.Linear(6, 6)
        self.out = nn.Linear(6, 6)
        self.tied = nn.Linear(6, 6)
        self.tied.weight = self.out.weight

    def forward(self, x):
        h = self.shared(torch.tanh(self.shared(self.front(x))))
        return self.tied(torch.tanh(self.out(h)))


def test_rows_come_from_the_earliest_watched_output_the_backward_reaches(tmp_path):
    net = FrozenFront()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    with gradscope.attach(net, tmp_path / "f.h5", optimizer=opt, stats=list(GNS_STATS)):
        for rows in (3, 5):
            F.mse_loss(net(torch.randn(rows, 4)), torch.zeros(rows, 6)).backward()
        opt.step()
    run = gradscope.open_run(tmp_path / "f.h5")
    names = list(run.layers["name"])
    large = run.stat("gns_large_batch")[0]
    assert np.isnan(large[names.index("front")])  # frozen: no gradient, and no rows
    assert (large[[names.index(n) for n in ("shared", "out", "tied")]] == 8).all()
    # the tied weight counts once, in `out`: the layers add up to the model
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    unique = sum(g.double().pow(2).sum().item() for g in grads)
    assert np.nansum(run.stat("gns_large_sq")[0]) == pytest.approx(unique, rel=1e-5)
    tied_bias = net.tied.bias.grad.double().pow(2).sum().item()
    assert run.stat("gns_large_sq")[0, names.index("tied")] == pytest.approx(tied_bias, rel=1e-5)


def test_a_backward_that_reaches_no_watched_output_warns_and_records_no_batch(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    with gradscope.attach(net, tmp_path / "w.h5", optimizer=opt, layers=["0"]):
        net(torch.randn(2, 4)).sum().backward()
        net(torch.randn(2, 4))  # a forward pass, then a backward that skips its outputs
        (net[0].weight.sum() * 2).backward()
        with pytest.warns(RuntimeWarning, match="size of its batch is unknown"):
            opt.step()
    run = gradscope.open_run(tmp_path / "w.h5")
    assert np.isnan(run.stat("gns_large_batch")).all()
    assert np.isnan(run.stat("gns_small_sq")).all()
    assert np.isfinite(run.stat("gns_large_sq")).all()


def test_two_backward_passes_of_one_forward_warn_and_record_no_small_batches(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    with gradscope.attach(net, tmp_path / "t.h5", optimizer=opt, stats=list(GNS_STATS)):
        for _ in range(2):  # two micro-batches; the second backpropagated twice
            out = net(torch.randn(3, 4))
            out.sum().backward(retain_graph=True)
        out.pow(2).sum().backward()
        with pytest.warns(RuntimeWarning, match="two gradients between forward passes"):
            opt.step()
    run = gradscope.open_run(tmp_path / "t.h5")
    assert np.isnan(run.stat("gns_small_sq")).all() and (run.stat("gns_large_batch") == 6).all()


class Checkpointed(nn.Module):
    """Three linear layers, each in its own activation checkpoint (reentrant or not)."""

    def __init__(self, reentrant):
        super().__init__()
        self.reentrant = reentrant
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        if self.reentrant is None:
            return self.c(torch.tanh(self.b(self.a(x))))
        h = checkpoint(self.a, x, use_reentrant=self.reentrant)
        h = checkpoint(lambda t: torch.tanh(self.b(t)), h, use_reentrant=self.reentrant)
        return checkpoint(self.c, h, use_reentrant=self.reentrant)


def test_activation_checkpointing_reentrant_or_not_records_the_same_sums(tmp_path):
    # Under reentrant checkpointing the forward runs under no_grad and each segment's backward
    # is a graph task of its own: still three small batches a step, as without checkpoints.
    runs = {}
    for reentrant in (None, True, False):
        torch.manual_seed(0)
        net = Checkpointed(reentrant)
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        path = tmp_path / f"{reentrant}.h5"
        with gradscope.attach(net, path, optimizer=opt, stats=list(GNS_STATS)):
            for step in range(2):
                for micro in range(3):
                    x, y = draw(5, step, micro)
                    (F.mse_loss(net(x.requires_grad_()), y[:, :2]) / 3).backward()
                opt.step()
                opt.zero_grad()
        runs[reentrant] = np.stack([gradscope.open_run(path).stat(s) for s in GNS_STATS])
    assert np.isfinite(runs[None]).all() and (runs[None][3] == 15).all()
    for reentrant in (True, False):
        np.testing.assert_allclose(runs[reentrant], runs[None], rtol=1e-5)


def test_a_tripped_step_has_no_noise_scale_and_the_next_is_whole(tmp_path):
    # The flight recorder replays a step whose gradient is not finite: its passes are no
    # small batches, and its record has no noise scale; the steps around it are measured.
    net = population_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    path = tmp_path / "trip.h5"
    with pytest.warns(RuntimeWarning, match="step 1: .* is not"):
        with gradscope.attach(net, path, optimizer=opt, stats=list(GNS_STATS), nonfinite="skip"):
            for step in range(3):
                for micro in range(2):
                    x, y = draw(ROWS, step, micro)
                    if step == 1 and micro == 1:
                        y = y * float("inf")
                    loss(net, x, y).backward()
                opt.step()
                opt.zero_grad()
    run = gradscope.open_run(path)
    assert list(run.steps) == [0, 1, 2]
    for stat in GNS_STATS:
        values = run.stat(stat)
        assert np.isnan(values[1]).all() and np.isfinite(values[[0, 2]]).all(), stat

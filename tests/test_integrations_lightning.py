"""The Lightning callback against references taken in the module's own Lightning hooks."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradscope
from gradscope.recorder import ALL_STATS
from tests.reference import (
    ReferenceProbe,
    act_grad_reference,
    act_reference,
    gns_reference,
    grad_reference,
    gradient_change,
    parameter_grads,
    unit_reference,
    weight_copy,
    weight_reference,
)

L = pytest.importorskip("lightning")
from gradscope.integrations.lightning import GradscopeCallback  # noqa: E402

LAYERS = ("net.0", "net.2")
ACCUMULATE, STEPS, CLIP = 2, 3, 0.05


class TinyModule(L.LightningModule):
    """Two linear layers; each Lightning hook that sees the gradients takes a reference."""

    def __init__(self, fail_at_step=None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
        self.fail_at_step = fail_at_step
        self.probe = None  # a ReferenceProbe on the layers, set by the test
        self.expected = {}  # optimizer step -> layer -> statistic -> value
        self.clipped = {}  # optimizer step -> layer -> grad_norm after clipping
        self.losses = {}  # optimizer step -> the last train_loss logged in it
        self._before = None
        self._grads = None  # the gradients before the backward pass in progress
        self._changes, self._rows = [], []  # each backward's gradient and rows: small batches

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at_step:
            raise RuntimeError("a failing step")
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        self.log("train_loss_mean", loss, on_step=False, on_epoch=True)
        if self.global_step == 0:
            self.log("logged_once", 7.0)
        self.losses[self.global_step] = loss.item()
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self.net(x), y))

    def on_before_backward(self, loss):
        self._grads = parameter_grads(self)

    def on_after_backward(self):
        self._changes.append(gradient_change(self, self._grads))
        self._rows.append(4)  # the loader's batch size

    def on_before_optimizer_step(self, optimizer):
        layers = self._layers()
        ref = {name: grad_reference(m) for name, m in layers.items()}
        for name, values in gns_reference(layers, self._changes, self._rows).items():
            ref[name].update(values)  # before clipping, as the gradients are here
        self._changes, self._rows = [], []
        if self.probe is not None:
            for name in layers:
                ref[name].update(act_reference(self.probe.outputs[name], None))
                ref[name].update(unit_reference(self.probe.outputs[name], None, layers[name]))
                ref[name]["act_grad_norm"] = act_grad_reference(self.probe.outputs[name])
            self.probe.clear()
        self.expected[self.global_step] = ref
        self._before = {name: weight_copy(m) for name, m in layers.items()}

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self._before is None:
            return  # an accumulation micro-batch: no optimizer step yet
        step = self.global_step - 1
        for name, m in self._layers().items():
            self.expected[step][name].update(weight_reference(self._before[name], m))
        # the update leaves .grad alone: these are the gradients after clipping
        self.clipped[step] = {n: grad_reference(m)["grad_norm"] for n, m in self._layers().items()}
        self._before = None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def _layers(self):
        return {name: self.get_submodule(name) for name in LAYERS}


def loader(n=4 * ACCUMULATE * STEPS, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
    return DataLoader(data, batch_size=4)


def trainer(tmp_path, callback, lightning=L, **kwargs):
    settings = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        max_steps=STEPS,
        accumulate_grad_batches=ACCUMULATE,
    )
    return lightning.Trainer(callbacks=[callback], **(settings | kwargs))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, one_thread):
    """One fit with accumulation, norm clipping and a validation pass at the end."""
    tmp_path = tmp_path_factory.mktemp("lightning")
    torch.manual_seed(0)
    module = TinyModule()
    module.probe = ReferenceProbe(module._layers())
    path = tmp_path / "tiny.h5"
    callback = GradscopeCallback(path, batch_sample=None, attrs={"note": "test"})
    trainer(tmp_path, callback, gradient_clip_val=CLIP, limit_val_batches=1).fit(
        module, loader(), loader(4)
    )
    module.probe.remove()
    return gradscope.open_run(path), module, callback


def test_one_record_per_optimizer_step_matching_the_modules_hooks(fitted):
    run, module, _ = fitted
    assert list(run.steps) == list(range(STEPS))
    assert list(run.layers["name"]) == list(LAYERS)
    for i, step in enumerate(run.steps):
        for stat in ALL_STATS:
            want = [module.expected[int(step)][name][stat] for name in LAYERS]
            np.testing.assert_allclose(
                run.stat(stat)[i], want, rtol=1e-4, atol=1e-6, err_msg=f"{stat} at {step}"
            )


def test_gradients_are_before_clipping_and_the_clip_coefficient_is_logged(fitted):
    run, module, _ = fitted
    coef = run.metrics["grad_clip_coef"].loc[list(run.steps)].to_numpy()
    assert (coef < 1).all()  # the clipping did act on every step
    clipped = np.array([[module.clipped[int(s)][name] for name in LAYERS] for s in run.steps])
    np.testing.assert_allclose(run.stat("grad_norm") * coef[:, None], clipped, rtol=1e-4)


def test_logged_metrics_land_against_their_optimizer_step(fitted):
    run, module, _ = fitted
    m = run.metrics
    assert list(m["train_loss"].dropna().index) == list(range(STEPS))
    np.testing.assert_allclose(m["train_loss"].dropna(), [module.losses[s] for s in range(STEPS)])
    assert list(m["logged_once"].dropna().index) == [0]  # stored once, not at every step
    assert list(m["val_loss"].dropna().index) == [STEPS - 1]
    assert list(m["train_loss_mean"].dropna().index) == [STEPS - 1]


def test_run_attributes_say_it_came_from_lightning(fitted):
    run, _, callback = fitted
    a = run.attrs
    assert a["framework"] == "lightning" and a["framework_version"] == L.__version__
    assert a["model_qualname"].endswith("test_integrations_lightning.TinyModule")
    assert a["model_class"] == "TinyModule" and torch.__version__.startswith(a["torch_version"])
    assert a["accumulate_grad_batches"] == ACCUMULATE and a["gradient_clip_val"] == CLIP
    assert (
        a["gradient_clip_algorithm"] == "norm" and "before gradient clipping" in a["gradients_read"]
    )
    assert a["strategy"] == "SingleDeviceStrategy" and a["precision"] == "32-true"
    assert a["note"] == "test" and a["attach_args"]["manual_gradients"] is True
    assert callback.recorder.closed


def test_an_exception_closes_the_run_file_and_removes_the_hooks(tmp_path):
    module = TinyModule(fail_at_step=2)
    path = tmp_path / "failed.h5"
    with pytest.raises(RuntimeError, match="a failing step"):
        trainer(tmp_path, GradscopeCallback(path), max_steps=4).fit(module, loader())
    assert not any(m._forward_hooks for m in module.modules())
    run = gradscope.open_run(path)
    assert list(run.steps) == [0, 1] and not run.is_live


def test_a_resumed_fit_continues_the_steps_of_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resumed.h5"
    first = trainer(tmp_path, GradscopeCallback(path, every=2), max_steps=2)
    first.fit(TinyModule(), loader())
    first.save_checkpoint(tmp_path / "at2.ckpt")
    second = trainer(tmp_path, GradscopeCallback(path, every=2, resume=True), max_steps=STEPS + 1)
    second.fit(TinyModule(), loader(), ckpt_path=tmp_path / "at2.ckpt")
    run = gradscope.open_run(path)
    assert list(run.steps) == [0, 2]
    assert list(run.metrics["train_loss"].dropna().index) == [0, 1, 2, 3]


def test_a_bad_batch_is_replayed_and_its_update_skipped_through_the_callback(tmp_path):
    # training_step calls self.net(x): the replay re-runs that entry, the module's own child;
    # the check runs in on_before_optimizer_step, inside optimizer.step(closure).
    torch.manual_seed(0)
    data = loader()
    data.dataset.tensors[0][3 * 4 + 1, 2] = float("nan")  # batch 3: step 1's second micro-batch
    module = TinyModule()
    path = tmp_path / "bad.h5"
    with pytest.warns(RuntimeWarning, match="input batch \\(micro-batch 2 of 2\\)"):
        trainer(tmp_path, GradscopeCallback(path, every=50, nonfinite="skip")).fit(module, data)
    assert all(torch.isfinite(p).all() for p in module.parameters())  # the update was skipped
    (origin,) = gradscope.open_run(path).events.itertuples()
    assert (origin.step, origin.phase, origin.update) == (1, "input", "skipped")
    assert (origin.micro_batch, origin.micro_batches) == (2, ACCUMULATE)


def test_pytorch_lightning_flavour(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from gradscope.integrations.pytorch_lightning import GradscopeCallback as PLCallback

    class PLModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(6, 3)

        def training_step(self, batch, batch_idx):
            loss = F.cross_entropy(self.net(batch[0]), batch[1])
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    path = tmp_path / "pl.h5"
    trainer(tmp_path, PLCallback(path), lightning=pl).fit(PLModule(), loader())
    run = gradscope.open_run(path)
    assert list(run.steps) == list(range(STEPS)) and run.attrs["framework"] == "pytorch_lightning"
    assert np.isfinite(run.stat("grad_norm")).all() and not math.isnan(
        run.metrics["train_loss"].iloc[-1]
    )


def test_bad_arguments_fail_when_the_callback_is_made(tmp_path):
    with pytest.raises(gradscope.UsageError, match="passes optimizer="):
        GradscopeCallback(tmp_path / "r.h5", optimizer=None)
    with pytest.raises(gradscope.UsageError, match="unknown argument 'evry'"):
        GradscopeCallback(tmp_path / "r.h5", evry=2)
    with pytest.raises(gradscope.UsageError, match="framework"):
        GradscopeCallback(tmp_path / "r.h5", attrs={"framework": "mine"})


def test_a_compiled_module_records_what_the_eager_one_records(fitted, tmp_path, one_thread):
    run, _, _ = fitted
    torch.manual_seed(0)
    module = TinyModule()  # the fixture's weights, batches, clipping and validation pass
    path = tmp_path / "compiled.h5"
    callback = GradscopeCallback(path, batch_sample=None)
    compiled = torch.compile(module, backend="eager")  # Lightning compiles training_step
    trainer(tmp_path, callback, gradient_clip_val=CLIP, limit_val_batches=1).fit(
        compiled, loader(), loader(4)
    )
    got = gradscope.open_run(path)
    assert list(got.steps) == list(run.steps) and list(got.layers["name"]) == list(LAYERS)
    for stat in ALL_STATS:
        np.testing.assert_allclose(got.stat(stat), run.stat(stat), rtol=1e-5, err_msg=stat)

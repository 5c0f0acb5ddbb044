"""The Hugging Face Trainer callback against references taken in the Trainer's own events."""

import os

import numpy as np
import pytest
import torch

import gradscope
from gradscope.recorder import ALL_STATS
from tests.reference import (
    ReferenceProbe,
    act_grad_reference,
    act_reference,
    gns_reference,
    grad_reference,
    unit_reference,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the Hub
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it
from gradscope.integrations.transformers import GradscopeCallback  # noqa: E402

STEPS, ACCUMULATE, VOCAB, LENGTH = 3, 2, 32, 12


def tiny_gpt2():
    """A 2-layer GPT-2 from its config: no download, no tokenizer."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=LENGTH, n_embd=16, n_layer=2, n_head=2
    )
    return transformers.GPT2LMHeadModel(config)


class Tokens(torch.utils.data.Dataset):
    """Fixed random token sequences, each its own label (the model shifts them)."""

    def __init__(self, n=2 * ACCUMULATE * (STEPS + 1)):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCAB, (n, LENGTH), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Reference(transformers.TrainerCallback):
    """Per-layer references taken where the Trainer hands callbacks the gradients."""

    def __init__(self, names, skip_step=None):
        self.names = names
        self.skip_step = skip_step  # a global_step whose optimizer step does not run
        self.probe = None
        self.expected = []  # one dict layer -> statistic -> value per optimizer step taken
        self.trainer = None
        self.changes = [{}]  # each micro-batch's gradients (before clipping): id -> float64
        self.handles = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.probe is None:
            layers = {name: model.get_submodule(name) for name in self.names}
            self.probe = ReferenceProbe(layers)
            for p in model.parameters():  # what each backward adds, kept whole
                self.handles.append(p.register_hook(self._keep(p)))
        self.probe.clear()
        self.changes = [{}]

    def _keep(self, p):
        def hook(grad):
            change = self.changes[-1]
            change[id(p)] = change.get(id(p), 0) + grad.detach().double()

        return hook

    def on_substep_end(self, args, state, control, **kwargs):
        self.changes.append({})  # a micro-batch done, not the step's last

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        ref = {}
        for name in self.names:
            module = model.get_submodule(name)
            ref[name] = grad_reference(module)
            ref[name].update(act_reference(self.probe.outputs[name], None))
            ref[name].update(unit_reference(self.probe.outputs[name], None, module))
            ref[name]["act_grad_norm"] = act_grad_reference(self.probe.outputs[name])
        layers = {name: model.get_submodule(name) for name in self.names}
        changes = [
            {id(p): c.get(id(p), torch.zeros(())) for p in model.parameters()} for c in self.changes
        ]
        for name, values in gns_reference(layers, changes, [2] * len(changes)).items():
            ref[name].update(values)  # two sequences a micro-batch
        if state.global_step == self.skip_step:
            # as accelerate does when the GradScaler finds inf/NaN: optimizer.step() skips
            self.trainer.optimizer.step = lambda *args, **kwargs: None
        else:
            self.expected.append(ref)

    def on_step_end(self, args, state, control, **kwargs):
        vars(self.trainer.optimizer).pop("step", None)


def train(tmp_path, callback, skip_step=None, **args):
    model = tiny_gpt2()
    names = [name for name, m in model.named_modules() if list(m.parameters(recurse=False))]
    reference = Reference(names, skip_step)
    settings = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=STEPS,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=ACCUMULATE,
        learning_rate=1e-3,
        max_grad_norm=0.5,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=model,
        args=transformers.TrainingArguments(**(settings | args)),
        train_dataset=Tokens(),
        callbacks=[callback, reference],
    )
    reference.trainer = trainer
    trainer.train()
    reference.probe.remove()
    for handle in reference.handles:
        handle.remove()
    return trainer, reference


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    tmp_path = tmp_path_factory.mktemp("hf")
    path = tmp_path / "gpt2.h5"
    trainer, reference = train(tmp_path, GradscopeCallback(path, batch_sample=None))
    return gradscope.open_run(path), trainer, reference


def assert_matches_reference(run, expected, stats):
    names = list(run.layers["name"])
    assert len(run.steps) == len(expected)
    for i, ref in enumerate(expected):
        for stat in stats:
            want = [ref[name][stat] for name in names]
            np.testing.assert_allclose(
                run.stat(stat)[i], want, rtol=1e-4, atol=1e-6, err_msg=f"{stat} at record {i}"
            )


def test_one_record_per_optimizer_step_matching_on_pre_optimizer_step(trained):
    run, _, reference = trained
    assert list(run.steps) == list(range(STEPS))
    assert "transformer.h.1.mlp.c_proj" in list(run.layers["name"])
    grad_stats = [s for s in ALL_STATS if s.startswith(("grad_", "act_", "gns_"))]
    assert_matches_reference(run, reference.expected, grad_stats)
    assert np.isfinite(run.stat("gns_small_sq")[:, 0]).all()  # before clipping, two a step


def test_logged_loss_and_learning_rate_land_against_the_optimizer_step(trained):
    run, trainer, _ = trained
    m = run.metrics
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in history] == [1, 2, 3]  # the Trainer counts steps from 1
    assert list(m["loss"].dropna().index) == [0, 1, 2]
    np.testing.assert_allclose(m["loss"].dropna(), [h["loss"] for h in history])
    np.testing.assert_allclose(m["learning_rate"].dropna(), [h["learning_rate"] for h in history])
    np.testing.assert_allclose(m["grad_norm"].dropna(), [h["grad_norm"] for h in history])
    assert "train_runtime" in m  # the summary logged at the end, against the last step
    # the Trainer's grad_norm is before clipping to max_grad_norm=0.5, the statistics after
    assert (m["grad_norm"].dropna() > 0.5).all()
    clipped = np.sqrt(np.nansum(run.stat("grad_norm")[:, :-1] ** 2, axis=1))  # less tied lm_head
    np.testing.assert_allclose(clipped, 0.5, rtol=1e-3)


def test_run_attributes_say_it_came_from_the_trainer(trained):
    run, _, _ = trained
    a = run.attrs
    assert a["framework"] == "transformers" and a["framework_version"] == transformers.__version__
    assert a["model_qualname"] == "transformers.models.gpt2.modeling_gpt2.GPT2LMHeadModel"
    assert a["model_type"] == "gpt2" and a["gradient_accumulation_steps"] == ACCUMULATE
    assert a["max_grad_norm"] == 0.5 and a["precision"] == "fp32"
    assert "after" in a["gradients_read"] and a["attach_args"]["manual_gradients"] is True
    assert not run.is_live


def test_a_skipped_optimizer_step_is_not_recorded_and_leaks_nothing(tmp_path, one_thread):
    path = tmp_path / "skipped.h5"
    _, reference = train(tmp_path, GradscopeCallback(path, batch_sample=None), skip_step=1)
    run = gradscope.open_run(path)
    assert list(run.steps) == [0, 1]  # three Trainer steps, one skipped
    assert_matches_reference(run, reference.expected, ["grad_norm", "act_mean", "act_grad_norm"])


def test_bad_arguments_fail_when_the_callback_is_made(tmp_path):
    with pytest.raises(gradscope.UsageError, match="passes manual_gradients="):
        GradscopeCallback(tmp_path / "r.h5", manual_gradients=False)
    with pytest.raises(gradscope.UsageError, match="model_type"):
        GradscopeCallback(tmp_path / "r.h5", attrs={"model_type": "mine"})


def test_a_compiled_model_records_what_the_eager_one_records(trained, tmp_path, one_thread):
    run, _, _ = trained
    path = tmp_path / "compiled.h5"
    compile_args = dict(torch_compile=True, torch_compile_backend="eager")
    trainer, _ = train(tmp_path, GradscopeCallback(path, batch_sample=None), **compile_args)
    assert trainer.model_wrapped is not trainer.model  # the Trainer trained a compiled wrapper
    got = gradscope.open_run(path)
    assert list(got.steps) == list(run.steps)
    for stat in ALL_STATS:
        np.testing.assert_allclose(
            got.stat(stat), run.stat(stat), rtol=1e-5, atol=1e-7, err_msg=stat, equal_nan=True
        )

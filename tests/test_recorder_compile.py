"""The recorder inside torch.compile: no graph break, no recompile, eager's statistics."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.models import create_model
from gradscope.recorder import ALL_STATS
from tests.test_recorder import (
    SmallCNN,
    StructuredOutputs,
    assert_matches,
    image_batch,
    mlp,
    out_of_place_twin,
    run_against_reference,
    vector_batch,
)

# aot_eager runs dynamo and AOTAutograd as inductor does (the graph ops, effect tokens, the
# probe's backward), without generating code: compiling takes a fraction of a second.
AOT = dict(backend="aot_eager", fullgraph=True)


class GraphCapture:
    """A torch.compile backend that keeps every graph dynamo hands it (and runs it as is)."""

    def __init__(self):
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    @staticmethod
    def gradscope_ops(graph) -> int:
        """How many calls of gradscope's graph ops `graph` makes in its forward."""
        return sum("gradscope" in str(node.target) for node in graph.graph.nodes)


def compiled(**kwargs):
    """run_against_reference's `forward`: the model compiled as `kwargs` say."""
    return lambda model: torch.compile(model, **kwargs)


@pytest.mark.parametrize(
    "make_model, batch_fn, layers, twin",
    [
        (mlp, vector_batch, None, None),
        (lambda: SmallCNN(inplace=True), image_batch, ["*"], out_of_place_twin),
    ],
    ids=["mlp", "cnn-inplace-all-modules"],
)
def test_compiled_statistics_equal_the_reference(tmp_path, make_model, batch_fn, layers, twin):
    run, expected = run_against_reference(
        tmp_path, make_model, batch_fn, steps=4, every=2, batch_sample=4, accumulate=2,
        layers=layers, twin_model=twin, forward=compiled(**AOT),
    )  # fmt: skip
    assert list(run.steps) == [0, 2]
    assert_matches(run, expected)


def test_inductor_statistics_equal_the_reference(tmp_path, one_thread):
    # inductor's own code: convolution outputs are channels-last inside its graphs
    run, expected = run_against_reference(
        tmp_path, lambda: SmallCNN(inplace=True), image_batch, steps=2, accumulate=2,
        twin_model=out_of_place_twin, forward=compiled(fullgraph=True),
    )  # fmt: skip
    assert_matches(run, expected)


def test_the_device_path_inside_a_compiled_graph_equals_the_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADSCOPE_KERNELS", "torch")
    run, expected = run_against_reference(
        tmp_path, lambda: SmallCNN(inplace=True), image_batch, steps=2, accumulate=2,
        twin_model=out_of_place_twin, forward=compiled(**AOT),
    )  # fmt: skip
    assert_matches(run, expected)


def test_bf16_autocast_records_what_eager_records(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN(inplace=True)
    twin = copy.deepcopy(model)
    runs = []
    for net, name, forward in ((model, "c.h5", torch.compile(model, **AOT)), (twin, "e.h5", twin)):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        with gradscope.attach(net, tmp_path / name, optimizer=opt, layers=["*"]):
            for step in range(2):
                x, y = image_batch(step)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = F.cross_entropy(forward(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad()
        runs.append(gradscope.open_run(tmp_path / name))
    for stat in ALL_STATS:  # bf16 rounds differently where AOTAutograd decomposes ops
        np.testing.assert_allclose(
            runs[0].stat(stat), runs[1].stat(stat), rtol=2e-2, atol=1e-3, err_msg=stat
        )


# ----- graph breaks, recompiles, the graphs themselves ----------------------------------------


class TinyTransformer(nn.Module):
    """A one-block pre-LN transformer (nanoGPT-style attention with scaled_dot_product)."""

    def __init__(self, vocab=16, width=16, heads=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        self.head = nn.Linear(width, vocab)
        self.heads = heads

    def forward(self, ids):
        x = self.embed(ids)  # (B, T, C)
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, C / heads)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        x = x + self.mlp(self.ln2(x))
        return self.head(x)


def token_batch(step, micro=0):
    g = torch.Generator().manual_seed(1000 * step + micro)
    ids = torch.randint(0, 16, (4, 8), generator=g)
    return ids, ids  # each position predicts its own token: enough for gradients


def logits_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def resnet_batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 10, (2,), generator=g)


MODELS = {  # name -> (model, batch, loss, watched layers)
    "resnet20": (lambda: create_model("resnet20"), resnet_batch, F.cross_entropy, None),
    "transformer": (TinyTransformer, token_batch, logits_loss, None),
    "dict outputs": (
        lambda: StructuredOutputs("dict"),
        vector_batch,
        F.cross_entropy,
        ["split*", "head"],
    ),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_no_graph_break_and_no_recompile_when_the_schedule_switches(tmp_path, name):
    make_model, batch_fn, loss_fn, layers = MODELS[name]
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rec = gradscope.attach(model, tmp_path / "r.h5", optimizer=opt, every=2, layers=layers)
    if name != "resnet20":  # a third trace of ResNet-20 adds seconds: fullgraph=True checks it
        explained = torch._dynamo.explain(model)(batch_fn(0)[0])
        assert explained.graph_break_count == 0, explained.break_reasons
    capture = GraphCapture()
    forward = torch.compile(model, backend=capture, fullgraph=True)  # would raise on a break
    compiles = []
    for step in range(4):  # recorded: 0, 2
        x, y = batch_fn(step)
        loss_fn(forward(x), y).backward()
        opt.step()
        opt.zero_grad()
        compiles.append(len(capture.graphs))
    rec.close()
    assert compiles == [1, 2, 2, 2]  # a graph with gradscope's ops, and one without
    with_ops, without = (capture.gradscope_ops(g) for g in capture.graphs)
    assert with_ops >= len(rec.layer_names) and without == 0
    run = gradscope.open_run(tmp_path / "r.h5")
    assert list(run.steps) == [0, 2]
    assert np.isfinite(run.stat("act_mean")).all() and np.isfinite(run.stat("act_grad_norm")).any()


def bare_graph(model, x) -> torch.fx.GraphModule:
    """The graph dynamo makes of `model` with no recorder attached (a deep copy of it)."""
    capture = GraphCapture()
    torch.compile(copy.deepcopy(model), backend=capture)(x)
    return capture.graphs[0]


def node_targets(graph) -> list[str]:
    return [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]


def test_a_non_recorded_step_runs_the_bare_graph_and_close_restores_it(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = image_batch(0)
    bare = node_targets(bare_graph(model, x))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    capture = GraphCapture()
    forward = torch.compile(model, backend=capture)
    rec = gradscope.attach(model, tmp_path / "r.h5", optimizer=opt, every=2)
    for _ in range(2):
        F.cross_entropy(forward(x), y).backward()
        opt.step()
        opt.zero_grad()
    assert node_targets(capture.graphs[1]) == bare  # step 1, not recorded
    assert capture.gradscope_ops(capture.graphs[0]) > 0
    rec.close()
    F.cross_entropy(forward(x), y).backward()
    assert len(capture.graphs) == 3 and node_targets(capture.graphs[2]) == bare


def test_attach_after_compile_recompiles_once_and_records_everything(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    twin = copy.deepcopy(model)
    capture = GraphCapture()
    forward = torch.compile(model, backend=capture, fullgraph=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1)
    for net, o in ((forward, opt), (twin, opt_twin)):  # trained a step before attach
        F.cross_entropy(net(vector_batch(9)[0]), vector_batch(9)[1]).backward()
        o.step()
        o.zero_grad()
    assert len(capture.graphs) == 1
    rec = gradscope.attach(forward, tmp_path / "c.h5", optimizer=opt, every=2)
    rec_twin = gradscope.attach(twin, tmp_path / "e.h5", optimizer=opt_twin, every=2)
    for step in range(4):
        x, y = vector_batch(step)
        for net, o in ((forward, opt), (twin, opt_twin)):
            F.cross_entropy(net(x), y).backward()
            o.step()
            o.zero_grad()
    rec.close()
    rec_twin.close()
    assert len(capture.graphs) == 3  # the one before attach, then with and without the ops
    got, want = gradscope.open_run(tmp_path / "c.h5"), gradscope.open_run(tmp_path / "e.h5")
    assert list(got.steps) == [0, 2]
    for stat in ALL_STATS:
        np.testing.assert_allclose(got.stat(stat), want.stat(stat), rtol=1e-5, err_msg=stat)


def test_the_graph_ops_are_ordered_effects_that_cuda_graphs_do_not_capture():
    from torch._higher_order_ops.effects import _get_effect

    for op in (torch.ops.gradscope.observe_outputs, torch.ops.gradscope.observe_output_grad):
        assert torch.Tag.cudagraph_unsafe in op.default.tags  # reduce-overhead splits around them
        assert _get_effect(op.default) is not None  # kept and kept in order, though they return ()

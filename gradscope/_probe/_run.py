"""The probe: a model (or one per width) through a few recorded steps, into one probe file."""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gradscope
from gradscope._probe._blocks import Block, describe_blocks, find_blocks
from gradscope._probe._channels import (
    CHANNEL_STATS,
    CallAverages,
    average_channel_variance,
    channel_dim,
    first_float_tensor,
    output_moments,
)
from gradscope._probe._inputs import ProbeBatches, probe_loss
from gradscope._probe._state import left_as_it_was
from gradscope.errors import GradscopeError, UsageError
from gradscope.recorder import model_device, owns_parameters, select_modules
from gradscope.statistics import PROBE_STATS
from gradscope.store import (
    PROBE_ATTR,
    STEP_METRIC,
    WIDTH_METRIC,
    ProbeLayout,
    RunWriter,
    is_probe,
    open_run,
)

# What the recorder measures for the probe, exactly as it does in training.
RECORDER_STATS = ("act_grad_norm", "grad_norm", "update_ratio", "weight_norm", "grad_nonfinite")
FILE_STATS = RECORDER_STATS + tuple(PROBE_STATS)
# Parameter-free modules watched by default besides the blocks: their outputs are where units
# die (post-activation), and the forward signal past each nonlinearity.
ACTIVATIONS = (nn.ReLU, nn.ReLU6)
# The optimizer of the first step's update when none is given: `gradscope record`'s recipe.
DEFAULT_SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4}


@dataclass
class _Measured:
    """What one model's probe measured: its layers and one [stats, layers] row per step."""

    layers: list[dict]  # name, type, params (depth order)
    values: np.ndarray  # float32 [steps + 1, len(FILE_STATS), layers]
    losses: np.ndarray  # float64 [steps + 1]
    blocks: list[str]  # names of the watched blocks
    residual: list[str]  # names of the watched residual blocks
    blocks_found: str  # the blocks in one sentence
    model_class: str
    params: int


@dataclass(frozen=True)
class _Settings:
    """What every width's probe shares."""

    batches: ProbeBatches
    steps: int
    loss: Callable | None
    optimizer: object  # None, an optimizer of the model, or a callable model -> optimizer
    layers: object  # None or a `layers=` selection as attach takes it
    residual_branches: dict | None
    seed: int


def run_probe(
    model,
    batch=None,
    *,
    steps: int = 0,
    widths=None,
    path=None,
    input_shape=None,
    batch_size: int = 128,
    loss: Callable | None = None,
    optimizer=None,
    layers=None,
    residual_branches=None,
    seed: int = 0,
    name: str | None = None,
):
    """`gradscope.probe` (documented there): measure, write the probe file, open it."""
    steps = _check_steps(steps)
    widths = _check_widths(widths, model, optimizer)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed must be an int, got {seed!r}")
    name = name or _default_name(model, widths)
    path = _output_path(path, name)
    batches = ProbeBatches(batch, batch_size, input_shape, seed)
    settings = _Settings(batches, steps, loss, optimizer, layers, residual_branches, seed)
    with tempfile.TemporaryDirectory(prefix="gradscope-probe-") as scratch:
        measured = [
            _probe_model(model, width, settings, Path(scratch) / f"width{i}.h5")
            for i, width in enumerate(widths)
        ]
    _check_same_layers(measured, widths)
    layout = ProbeLayout(tuple(widths), steps)
    info = _describe(measured, layout, settings)
    _write(path, measured, layout, {"model": name, "model_class": measured[0].model_class}, info)
    return open_run(path)


def _probe_model(model, width, settings: _Settings, recorder_path: Path) -> _Measured:
    """Build (at a width) or take the model, probe it, and leave it as it was."""
    if width is None:
        net = model
    else:
        with torch.random.fork_rng(devices=_cuda_devices()):
            torch.manual_seed(settings.seed)  # the same initialization seed at every width
            net = model(width=width)
        if not isinstance(net, nn.Module):
            raise UsageError(
                f"the model factory returned a {type(net).__name__} at width {width}, "
                "not a torch.nn.Module"
            )
    opt = _optimizer(settings.optimizer, net)
    given = opt if opt is settings.optimizer else None  # the caller's: its state is put back
    with left_as_it_was(net, given):
        torch.manual_seed(settings.seed)  # the forward's random draws: the same at each width
        net.train()
        return _measure(net, opt, settings, recorder_path)


def _measure(net, opt, settings: _Settings, recorder_path: Path) -> _Measured:
    """The probe's steps on `net` with the recorder and the probe's hooks attached."""
    steps = settings.steps
    everything = select_modules(net, nn.Module)  # (name as the recorder names it, module)
    blocks = find_blocks(everything, settings.residual_branches)
    watched = _watched(net, everything, blocks, settings.layers)
    watched_ids = {id(m) for _, m in watched}
    blocks = [b for b in blocks if id(b.module) in watched_ids]
    device = model_device(net)
    hooks = _ProbeHooks(watched, blocks, device)
    rows, losses = [], []
    try:
        with (
            torch.enable_grad(),
            gradscope.attach(
                net,
                recorder_path,
                optimizer=opt,
                every=1,
                stats=list(RECORDER_STATS),
                layers=[m for _, m in watched],
                batch_sample=None,
            ),
        ):
            for step in range(steps + 1):
                x, y = settings.batches.get(step, net, device)
                opt.zero_grad(set_to_none=True)
                value = probe_loss(settings.loss, net(x), y, settings.seed, step)
                value.backward()
                opt.step()
                rows.append(hooks.take())
                losses.append(value.detach())
    finally:
        hooks.remove()
    with open_run(recorder_path) as recorded:
        layer_dicts = recorded.layers[["name", "type", "params"]].to_dict("records")
        recorder_values = np.stack([recorded.stat(s) for s in RECORDER_STATS], axis=1)
        if len(recorded.steps) != steps + 1:
            raise GradscopeError(
                f"the recorder took {len(recorded.steps)} records for {steps + 1} probe steps"
            )
    position = {name: i for i, name in enumerate(hooks.names)}
    order = [position[layer["name"]] for layer in layer_dicts]
    probe_values = torch.stack(rows).cpu().numpy()[:, order, :].transpose(0, 2, 1)
    return _Measured(
        layers=layer_dicts,
        values=np.concatenate([recorder_values, probe_values], axis=1).astype(np.float32),
        losses=torch.stack(losses).double().cpu().numpy(),
        blocks=[b.name for b in blocks],
        residual=[b.name for b in blocks if b.residual],
        blocks_found=describe_blocks(blocks),
        model_class=type(net).__name__,
        params=sum(p.numel() for p in net.parameters()),
    )


class _ProbeHooks:
    """Forward hooks that measure the probe's own statistics of each watched output, and of
    each residual block's branch and skip. The values stay on the device until the end."""

    def __init__(self, watched, blocks: list[Block], device):
        self.names = [name for name, _ in watched]
        self._outputs = CallAverages(self.names, len(CHANNEL_STATS), device)
        block_names = [b.name for b in blocks if b.residual]
        self._branch = CallAverages(block_names, 1, device)
        self._skip = CallAverages(block_names, 1, device)
        position = {name: i for i, name in enumerate(self.names)}
        self._block_rows = [position[b] for b in block_names]
        self._handles = [m.register_forward_hook(self._output_hook(n, m)) for n, m in watched]
        for block in blocks:
            if block.residual:
                self._hook_residual(block)

    def _output_hook(self, name: str, module: nn.Module):
        def hook(_module, _inputs, output):
            x = first_float_tensor(output)
            if x is not None and torch.is_grad_enabled():
                self._outputs.add(name, output_moments(x, channel_dim(module, x.dim())), x.numel())

        return hook

    def _hook_residual(self, block: Block) -> None:
        def variance_hook(averages: CallAverages, module: nn.Module, inputs: bool):
            def hook(_module, args, output=None):
                x = first_float_tensor(args if inputs else output)
                if x is not None and torch.is_grad_enabled():
                    variance = average_channel_variance(x, channel_dim(module, x.dim()))
                    averages.add(block.name, variance.reshape(1), x.numel())

            return hook

        branch = block.branch
        self._handles.append(
            branch.register_forward_hook(variance_hook(self._branch, branch, inputs=False))
        )
        if block.shortcut is None:  # the skip is the block's input
            hook = variance_hook(self._skip, block.module, inputs=True)
            self._handles.append(block.module.register_forward_pre_hook(hook))
        else:
            hook = variance_hook(self._skip, block.shortcut, inputs=False)
            self._handles.append(block.shortcut.register_forward_hook(hook))

    def take(self) -> torch.Tensor:
        """This step's values [watched modules, PROBE_STATS] (NaN where not measured)."""
        outputs = self._outputs.take()
        row = outputs.new_full((len(self.names), len(PROBE_STATS)), math.nan)
        column = {name: i for i, name in enumerate(PROBE_STATS)}
        for i, name in enumerate(CHANNEL_STATS):
            row[:, column[name]] = outputs[:, i]
        if self._block_rows:
            rows = torch.tensor(self._block_rows, device=row.device)
            branch, skip = self._branch.take()[:, 0], self._skip.take()[:, 0]
            row[rows, column["res_var"]] = branch
            row[rows, column["skip_var"]] = skip
            row[rows, column["res_ratio"]] = branch / skip
        return row

    def remove(self) -> None:
        """Take every hook off."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _watched(net, everything, blocks: list[Block], layers) -> list[tuple[str, nn.Module]]:
    """The watched modules: `layers` as attach takes it, or by default every module owning
    parameters, every block and every ReLU module."""
    if layers is not None:
        return select_modules(net, layers)
    block_ids = {id(b.module) for b in blocks}
    return [
        (name, m)
        for name, m in everything
        if owns_parameters(m) or id(m) in block_ids or isinstance(m, ACTIVATIONS)
    ]


def _optimizer(optimizer, net: nn.Module) -> torch.optim.Optimizer:
    """The optimizer whose steps the probe takes: the one given, one made by the factory
    given, or SGD with `gradscope record`'s settings."""
    if optimizer is None:
        return torch.optim.SGD(net.parameters(), **DEFAULT_SGD)
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    made = optimizer(net)
    if not isinstance(made, torch.optim.Optimizer):
        raise UsageError(
            f"the optimizer factory returned a {type(made).__name__}, not a torch.optim.Optimizer"
        )
    return made


def _describe_optimizer(optimizer) -> str:
    if optimizer is None:
        settings = ", ".join(f"{k}={v:g}" for k, v in DEFAULT_SGD.items())
        return f"SGD({settings})"
    if isinstance(optimizer, torch.optim.Optimizer):
        group = optimizer.param_groups[0]
        shown = {k: group[k] for k in ("lr", "momentum", "weight_decay") if k in group}
        settings = ", ".join(f"{k}={float(v):g}" for k, v in shown.items())
        return f"{type(optimizer).__name__}({settings})"
    name = getattr(optimizer, "__name__", type(optimizer).__name__)
    return "made by a callable" if name == "<lambda>" else name


def _describe(measured, layout: ProbeLayout, settings: _Settings) -> dict:
    """The probe file's `probe` attribute."""
    first, batches = measured[0], settings.batches
    if settings.loss is not None:
        loss = settings.loss
        loss_text = f"given ({getattr(loss, '__name__', type(loss).__name__)})"
    elif batches.source == "gaussian":
        loss_text = "cross-entropy against labels drawn uniformly from the seed"
    else:
        loss_text = "cross-entropy against the batch's targets (drawn labels where none)"
    return {
        "widths": None if not layout.is_sweep else list(layout.widths),
        "steps": layout.steps,
        "batch": batches.source,
        "batch_size": batches.batch_size if batches.source == "gaussian" else None,
        "input_shape": list(batches.input_shape) if batches.input_shape else None,
        "seed": settings.seed,
        "loss": loss_text,
        "optimizer": _describe_optimizer(settings.optimizer),
        "layers": "default" if settings.layers is None else "given",
        "blocks": first.blocks,
        "residual_blocks": first.residual,
        "blocks_found": first.blocks_found,
        "params": [m.params for m in measured],
    }


def _write(path: Path, measured: list[_Measured], layout: ProbeLayout, attrs: dict, info) -> None:
    writer = RunWriter(
        path,
        layers=measured[0].layers,
        stats=list(FILE_STATS),
        attrs={**attrs, PROBE_ATTR: info},
        overwrite=True,
    )
    try:
        for i, (width, m) in enumerate(zip(layout.widths, measured, strict=True)):
            for step in range(layout.steps + 1):
                key = layout.key(i, step)
                writer.append(key, m.values[step])
                metrics = {"loss": float(m.losses[step]), STEP_METRIC: step}
                if width is not None:
                    metrics[WIDTH_METRIC] = width
                writer.log(key, metrics)
    finally:
        writer.close()


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise UsageError(f"steps must be an int >= 0, got {steps!r}")
    return steps


def _check_widths(widths, model, optimizer) -> list:
    """[None] for a probe of `model` itself, else the sorted widths a factory is called with."""
    if widths is None:
        if not isinstance(model, nn.Module):
            raise UsageError(
                f"model must be a torch.nn.Module (or, with widths=, a callable width -> model), "
                f"got {type(model).__name__}"
            )
        return [None]
    if isinstance(model, nn.Module) or not callable(model):
        raise UsageError(
            "with widths=, model must be a callable building the model at a width "
            "(it is called as model(width=w)), not a model"
        )
    if isinstance(optimizer, torch.optim.Optimizer):
        raise UsageError(
            "with widths=, pass optimizer as a callable model -> optimizer: each width's model "
            "needs its own"
        )
    try:
        chosen = sorted({int(w) for w in widths})
        exact = all(int(w) == w for w in widths)
    except (TypeError, ValueError):
        raise UsageError(f"widths must be a list of positive ints, got {widths!r}") from None
    if not exact or len(chosen) < 2 or chosen[0] < 1:
        raise UsageError(f"widths must hold at least two distinct positive ints, got {widths!r}")
    return chosen


def _check_same_layers(measured: list[_Measured], widths) -> None:
    names = [layer["name"] for layer in measured[0].layers]
    for m, width in zip(measured[1:], widths[1:], strict=True):
        other = [layer["name"] for layer in m.layers]
        if other != names:
            missing = sorted(set(names) ^ set(other))[:5]
            raise UsageError(
                f"the model at width {width} has other layers than at width {widths[0]} "
                f"(e.g. {', '.join(missing) or 'a different depth order'}): a width sweep needs "
                "the same layers at every width"
            )


def _default_name(model, widths) -> str:
    if widths == [None] or isinstance(model, nn.Module):
        return type(model).__name__
    return getattr(model, "__name__", type(model).__name__)


def _output_path(path, name: str) -> Path:
    """Where the probe file goes: `path` (an existing probe file there is replaced, any other
    file is refused, before the probe starts), or a temporary folder removed at exit."""
    if path is None:
        folder = Path(tempfile.mkdtemp(prefix="gradscope-probe-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "probe"
        return folder / f"{stem}.h5"
    path = Path(path)
    if path.suffix != ".h5":
        raise UsageError(f"the probe file {path} must end in .h5")
    if path.is_dir():
        raise UsageError(f"{path} is a folder; name the probe file, e.g. {path / (name + '.h5')}")
    if path.exists():
        try:
            with open_run(path) as existing:
                replaceable = is_probe(existing)
        except GradscopeError:
            replaceable = False
        if not replaceable:
            raise UsageError(
                f"{path} exists and is not a probe file; a probe replaces only probe files: "
                "choose another path"
            )
    return path


def _cuda_devices() -> list[int]:
    """The CUDA devices whose generators a factory may draw from (none without CUDA)."""
    return list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []

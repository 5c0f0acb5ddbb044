"""What the framework callbacks share: importing the framework, checking attach's arguments."""

from __future__ import annotations

import inspect

from gradscope.errors import UsageError
from gradscope.store._metric_values import metric_value

DISTRIBUTION = "torch-gradscope"  # the name to pip install gradscope by (its import name differs)
SET_BY_CALLBACK = ("optimizer", "manual_gradients")  # attach arguments the callbacks supply


def missing_framework(module: str, extra: str, what: str, error: ImportError) -> ImportError:
    """The error for a framework that does not import: what failed and the pip command."""
    return ImportError(
        f"{what} needs the {module!r} package, which does not import ({error}): "
        f"pip install '{DISTRIBUTION}[{extra}]'",
        name=module,
    )


def check_attach_kwargs(kwargs: dict, callback: str, framework_attrs) -> None:
    """Refuse, at construction, arguments `gradscope.attach` does not take or the callback sets."""
    import gradscope

    accepted = list(inspect.signature(gradscope.attach).parameters)[2:]  # less model and path
    for name in kwargs:
        if name in SET_BY_CALLBACK:
            raise UsageError(f"{callback} passes {name}= to gradscope.attach itself; leave it out")
        if name not in accepted:
            allowed = ", ".join(n for n in accepted if n not in SET_BY_CALLBACK)
            raise UsageError(
                f"{callback} got an unknown argument {name!r}; gradscope.attach takes {allowed}"
            )
    attrs = kwargs.get("attrs") or {}
    if not isinstance(attrs, dict):
        raise UsageError(f"attrs must be a dict, got {type(attrs).__name__}")
    taken = sorted(set(attrs) & set(framework_attrs))
    if taken:
        raise UsageError(
            f"{callback} writes the run-file attributes {', '.join(taken)} itself; "
            "give yours other names"
        )


class RecorderOwner:
    """The part of a callback that holds its recorder: made at construction from attach's
    arguments, attached when training starts, closed when it ends."""

    run_attrs: tuple[str, ...] = ()  # the run-file attributes the callback writes itself

    def __init__(self, path, every=1, **attach_kwargs):
        super().__init__()
        check_attach_kwargs(attach_kwargs, "GradscopeCallback", self.run_attrs)
        self.path = path
        self.every = every
        self.attach_kwargs = attach_kwargs
        self.recorder = None  # the gradscope Recorder, from the start of training on

    def close(self) -> None:
        """Remove the recorder's hooks and close the run file (safe to call twice)."""
        if self.recorder is not None:
            self.recorder.close()

    def _attach(self, model, optimizer, attrs: dict, framework_step: int) -> None:
        """Attach to `model`, reading the gradients when told; a run resumed at a framework
        step goes on from it."""
        import gradscope

        self.close()
        kwargs = dict(self.attach_kwargs)
        kwargs["attrs"] = {**(kwargs.get("attrs") or {}), **attrs}
        if framework_step and kwargs.get("start_step") is None:
            kwargs["start_step"] = framework_step  # resumed from a checkpoint
        self.recorder = gradscope.attach(
            model,
            self.path,
            optimizer=optimizer,
            every=self.every,
            manual_gradients=True,
            **kwargs,
        )

    def _attached(self) -> bool:
        return self.recorder is not None and not self.recorder.closed


def qualified_name(cls: type) -> str:
    """`package.module.Class` of a class, as the run file stores it."""
    return f"{cls.__module__}.{cls.__qualname__}"


def numbers_only(values: dict) -> dict[str, float]:
    """The entries of a framework's log dict that are real numbers (or one-element tensors)."""
    kept = {}
    for name, value in values.items():
        try:  # note: a tensor's .item() is a host sync, as the framework's logger does
            kept[name] = metric_value(name, value)
        except UsageError:
            continue  # text and other values a framework logs: not metrics gradscope stores
    return kept

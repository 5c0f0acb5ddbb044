"""Callbacks that record a model trained by a framework's own loop, one record per optimizer step.

- `gradscope.integrations.lightning.GradscopeCallback`: Lightning 2.x (`lightning`);
  `gradscope.integrations.pytorch_lightning.GradscopeCallback` for `pytorch_lightning`.
- `gradscope.integrations.transformers.GradscopeCallback`: the Hugging Face `Trainer`.

Each submodule imports its framework, so `import gradscope` (and this package) imports none;
install them with `pip install 'torch-gradscope[lightning]'` or `[transformers]`.
"""

__all__: list[str] = []  # the callbacks live in the submodules named above

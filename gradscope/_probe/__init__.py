"""`gradscope.probe`: signal propagation at initialization and width sweeps (docs/probe.md).

The probe drives a model through a few steps with the recorder attached and its own hooks on
the watched outputs, then writes one probe file. The modules that need torch are imported by
`gradscope.probe` when it is called; `_diagnosis` (the rules at init) needs numpy only.
"""

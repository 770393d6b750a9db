"""The pipeline layer: studies and commands as functions of (model spec, image-study
source, recipe).

The library below it (``data``, ``models``, ``interp``, ``train``, ``eval``) holds the
parts: sources, adapters, tracing, the trainer, the metrics. A pipeline chains them into
what a user runs (trace, train, evaluate, a whole study), writes its outputs atomically,
and never knows which model or data it was given. The CLI only turns options into a call
of a pipeline function.
"""

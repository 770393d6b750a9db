"""The pipeline layer: studies that orchestrate data, models, interpretation, training and
metrics. A study is a function of (model spec, image-study source, recipe); it writes its
results and tables, and the CLI only turns options into its arguments. Modules are
imported by name (``mechtune.pipelines.paraphrase``); nothing is imported here.
"""

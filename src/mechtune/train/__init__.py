"""Training, one stack for both tasks.

- :mod:`~mechtune.train.lora`: ``LoraSettings``, ``LoraSite`` and the one ``lora_config``;
- :mod:`~mechtune.train.losses`: every loss, built by ``create_loss`` only;
- :mod:`~mechtune.train.trainer`: the one ``Trainer`` (optimiser, NAST scaling, shards/DDP,
  exact resume, final save); :mod:`~mechtune.train.scaling`: NAST's per-block factors;
- :mod:`~mechtune.train.checkpoint`: checkpoints, ``save_trained`` / ``load_trained``;
- tasks: :mod:`~mechtune.train.negation` (dual encoders), :mod:`~mechtune.train.consistency`
  (yes/no VLMs);
- :mod:`~mechtune.train.negation_data`: ``negation_examples`` (held-out conditions too);
- :mod:`~mechtune.train.methods`: the method registry,
  ``run_method`` and ``run_paraphrase_method``;
- :mod:`~mechtune.train.tracking`: ``--report-to`` TensorBoard / W&B through accelerate's
  trackers (``Tracker``); :mod:`~mechtune.train.validation`: the cheap validation
  metrics of ``eval_every``.
"""

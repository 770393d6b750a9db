"""Launched by test_distributed_cli.py under torchrun or ``accelerate launch``: the
``mechtune`` command line, with what this process did recorded in
``$MECHTUNE_TEST_RECORD/rank<RANK>.json``:

- ``writes``: every file or folder it moved into place (mechtune's atomic writes end in
  ``os.replace``; the adapter folder in ``Path.rename``);
- ``shards``: the shard index of every loss it computed (``loss_terms`` of the negation
  and consistency tasks), which shows how a step's shards were spread over the ranks.

The test puts the repository root on PYTHONPATH.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path
from typing import Any


def main() -> None:
    record = Path(os.environ["MECHTUNE_TEST_RECORD"]) / f"rank{os.environ.get('RANK', '0')}.json"
    writes: list[str] = []
    shards: list[int] = []

    real_replace = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        writes.append(str(dst))
        real_replace(src, dst, *args, **kwargs)

    real_rename = Path.rename

    def rename(self: Path, target: Any) -> Path:
        writes.append(str(target))
        return real_rename(self, target)

    os.replace = replace  # type: ignore[assignment]
    Path.rename = rename  # type: ignore[method-assign]

    from mechtune.train.consistency import ConsistencyTask
    from mechtune.train.negation import NegationTask

    for task in (NegationTask, ConsistencyTask):

        def loss_terms(
            self: Any, batch: Any, shard: int, n: int, _real: Any = task.loss_terms
        ) -> Any:
            shards.append(shard)
            return _real(self, batch, shard, n)

        task.loss_terms = loss_terms  # type: ignore[method-assign]

    def dump() -> None:
        record.write_text(json.dumps({"writes": writes, "shards": shards}), encoding="utf-8")

    atexit.register(dump)
    from mechtune.cli.main import main as cli

    sys.argv = ["mechtune", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()

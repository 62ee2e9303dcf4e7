#!/usr/bin/env bash
# BENCHMARKS.md's GPU rows on a fresh machine with one NVIDIA GPU: installs
# mixvae and the CUDA JAX in .venv, then runs launch/benchmark_gpu.py
# (arguments are passed on), writing benchmark_gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q -e . && pip install -q -U "jax[cuda12]"
python -c "import jax; assert jax.devices()[0].platform == 'gpu', jax.devices()"
python launch/benchmark_gpu.py --out=benchmark_gpu.json "$@"

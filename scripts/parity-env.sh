#!/usr/bin/env bash
# Build the optional vLLM-parity environment (never needed by `make run` / `make test`):
# a separate venv with a CPU build of torch, vLLM itself installed with --no-deps, and the
# non-GPU Python packages vLLM's scheduler imports. Usage: scripts/parity-env.sh [VENV]
set -euo pipefail
VENV=${1:-/tmp/simkv-vllm-parity}
VLLM=${VLLM_VERSION:-0.33.0}
python3.11 -m venv "$VENV"
PIP="$VENV/bin/python -m pip install -q"
$PIP --upgrade pip
$PIP torch --index-url https://download.pytorch.org/whl/cpu || $PIP torch
$PIP --no-deps "vllm==$VLLM"
# vLLM's non-GPU requirements (the subset its V1 scheduler, KV-cache manager and config import)
$PIP regex cachetools psutil sentencepiece numpy requests tqdm blake3 py-cpuinfo "transformers<5.21" \
     huggingface_hub tokenizers safetensors protobuf "pydantic>=2.12" msgspec cloudpickle pyzmq cbor2 pybase64 \
     prometheus_client pyyaml typing_extensions filelock einops openai fastapi aiohttp pillow partial-json-parser \
     setproctitle ijson python-json-logger watchfiles tiktoken oss-harmony uvloop xgrammar llguidance
# simkv's own dependencies (simkv itself runs from the checkout: PYTHONPATH, see `make parity`)
$PIP simpy scipy pyyaml annotated_types
echo "parity venv ready: $VENV"

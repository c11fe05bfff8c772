#!/usr/bin/env bash
# Run every benchmark; Markdown tables go to bench/results/RESULTS.md, raw numbers to bench/results/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
out=bench/results/RESULTS.md
{
    echo "# Benchmarks ($(date -u +%F), $(nproc) CPUs, $(python3 -c 'import tensorflow as tf; print("GPU" if tf.config.list_physical_devices("GPU") else "CPU only")' 2>/dev/null))"
    echo; echo "## Throughput of fit (images/s)"; python3 -m bench.throughput --steps 100 --rounds 3
    echo; echo "## Training stall per checkpoint"; python3 -m bench.stall
    echo; echo "## Preemption cost"; python3 -m bench.preemption
    echo; echo "## Signal-to-exit and resume latency"; python3 -m bench.latency
    echo; echo "## Quality (three-phase schedule)"; python3 -m bench.quality
} 2> bench/results/stderr.log | tee "$out"
echo "written: $out"

#!/usr/bin/env bash
# Run every benchmark; Markdown tables go to bench/results/RESULTS.md, raw numbers to bench/results/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
out=bench/results/RESULTS.md
{
    echo "# Benchmarks ($(date -u +%F), $(nproc) CPUs, $(python3 -c 'import tensorflow as tf; print("GPU" if tf.config.list_physical_devices("GPU") else "CPU only")' 2>/dev/null))"
    echo; echo "## The main command (default job)"; python3 -m bench.default_job
    echo; echo "## Throughput: our loop vs model.fit"; python3 -m bench.throughput
    echo; echo "## steps_per_execution: our loop vs model.fit at 1 and 32"; python3 -m bench.steps_per_execution
    echo; echo "## Training stall per checkpoint"; python3 -m bench.stall
    echo; echo "## Preemption cost"; python3 -m bench.preemption
    echo; echo "## Signal-to-exit and resume latency"; python3 -m bench.latency
    echo; echo "## Preemption notices: the window used, start-up with the watcher"; python3 -m bench.notices --slurm
    echo; echo "## Multi-worker"; python3 -m bench.multiworker
    echo; echo "## Several devices in one process"; python3 -m bench.devices
    echo; echo "## Streaming data: iterator restore vs skipping"; python3 -m bench.streaming
    echo; echo "## Sharded reading vs global reading vs TensorFlow's FILE sharding"; python3 -m bench.sharding
    echo; echo "## Quality (three-phase schedule), the tutorial's recipe"; python3 -m bench.quality
    echo; echo "## Quality, the recipe before 0.2 (momentum 0.9)"; python3 -m bench.quality --old-recipe --out bench/results/quality-old.json
} 2> bench/results/stderr.log | tee "$out"
echo "written: $out"

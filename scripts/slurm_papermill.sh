#!/usr/bin/env bash
# Run a halluc job notebook with papermill under `accelerate launch`, on one or more GPU nodes.
#
#   sbatch --nodes=1 --gres=gpu:8 scripts/slurm_papermill.sh nbs/train_grpo.ipynb configs/llama3.2-1b_grpo.yaml my-run
#   sbatch --nodes=2 --gres=gpu:8 scripts/slurm_papermill.sh nbs/train_sft.ipynb  configs/llama3.2-1b_sft_backtrack.yaml sft-2n [ACCEL_CONFIG]
#
# ACCEL_CONFIG defaults to configs/accelerate/ddp_gpu.yaml; use zero2.yaml / zero3.yaml for DeepSpeed.
# Every rank executes the notebook; rank 0 alone writes runs/<run-name>/ (the executed notebook, status.json,
# the model). GPUs per node come from Slurm (SLURM_GPUS_ON_NODE, set by --gres=gpu:N or --gpus-per-node=N), or
# GPUS_PER_NODE; the rendezvous port is a free one on the first node unless MASTER_PORT is set. Trackers: set
# WANDB_MODE / WANDB_PROJECT in the environment (offline nodes: WANDB_MODE=offline), trainer.report_to in the config.
#SBATCH --job-name=halluc
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=runs/slurm-%j.out
set -euo pipefail

REPO=${SLURM_SUBMIT_DIR:-$(pwd)}
ACCELERATE=${ACCELERATE:-$REPO/.venv/bin/accelerate}

if [[ "${1:-}" == "--on-node" ]]; then   # one launcher per node (started by srun below): accelerate starts the ranks
  shift
  cd "$REPO"
  exec "$ACCELERATE" launch --config_file "$4" \
    --num_machines "$NNODES" --num_processes "$((NNODES * GPUS_PER_NODE))" \
    --machine_rank "${SLURM_NODEID:-0}" --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT" \
    -m halluc.cli run "$1" "$2" "run.name=$3"
fi

NOTEBOOK=${1:?notebook, e.g. nbs/train_grpo.ipynb}
CONFIG=${2:?config, e.g. configs/llama3.2-1b_grpo.yaml}
RUN_NAME=${3:?run name}
ACCEL_CONFIG=${4:-configs/accelerate/ddp_gpu.yaml}
cd "$REPO"
# caches on the cluster's shared disk, never in $HOME
export HF_HOME=${HF_HOME:-$REPO/.cache/hf}
export MPLCONFIGDIR=$REPO/.cache/matplotlib IPYTHONDIR=$REPO/.cache/ipython
export JUPYTER_CONFIG_DIR=$REPO/.cache/jupyter/config JUPYTER_DATA_DIR=$REPO/.cache/jupyter/data JUPYTER_RUNTIME_DIR=$REPO/.cache/jupyter/runtime
export TORCHINDUCTOR_CACHE_DIR=$REPO/.cache/torchinductor TRITON_CACHE_DIR=$REPO/.cache/triton
export TOKENIZERS_PARALLELISM=false

export NNODES=${SLURM_NNODES:-1}
export GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}
GPUS_PER_NODE=${GPUS_PER_NODE##*:}   # "gpu:8" / "a100:8" forms -> 8
if ! [[ "$GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]]; then
  echo "slurm_papermill.sh: GPUs per node unknown (SLURM_GPUS_ON_NODE='${SLURM_GPUS_ON_NODE:-}'): submit with --gres=gpu:N or --gpus-per-node=N, or set GPUS_PER_NODE" >&2
  exit 2
fi
export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n1 || true)}
MASTER_ADDR=${MASTER_ADDR:-localhost}
# a port free on this (the first) node now; set MASTER_PORT to choose one
export MASTER_PORT=${MASTER_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}

srun --ntasks="$NNODES" --ntasks-per-node=1 "$REPO/scripts/slurm_papermill.sh" --on-node "$NOTEBOOK" "$CONFIG" "$RUN_NAME" "$ACCEL_CONFIG"

#!/usr/bin/env bash
# Run a halluc job notebook with papermill under `accelerate launch`, on one or more GPU nodes.
#
#   sbatch --nodes=1 --gres=gpu:8 scripts/slurm_papermill.sh nbs/train_grpo.ipynb configs/llama3.2-1b_grpo.yaml my-run
#   sbatch --nodes=2 --gres=gpu:8 scripts/slurm_papermill.sh nbs/train_sft.ipynb  configs/llama3.2-1b_sft_backtrack.yaml sft-2n [ACCEL_CONFIG]
#
# ACCEL_CONFIG defaults to configs/accelerate/ddp_gpu.yaml; use zero2.yaml / zero3.yaml for DeepSpeed.
# The executed notebook is written into runs/<run-name>/ by `halluc run`.
#SBATCH --job-name=halluc
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=runs/slurm-%j.out
set -euo pipefail
NOTEBOOK=${1:?notebook, e.g. nbs/train_grpo.ipynb}
CONFIG=${2:?config, e.g. configs/llama3.2-1b_grpo.yaml}
RUN_NAME=${3:?run name}
ACCEL_CONFIG=${4:-configs/accelerate/ddp_gpu.yaml}

REPO=${SLURM_SUBMIT_DIR:-$(pwd)}
cd "$REPO"
# caches on the cluster's shared disk, never in $HOME
export HF_HOME=${HF_HOME:-$REPO/.cache/hf}
export MPLCONFIGDIR=$REPO/.cache/matplotlib IPYTHONDIR=$REPO/.cache/ipython
export JUPYTER_CONFIG_DIR=$REPO/.cache/jupyter/config JUPYTER_DATA_DIR=$REPO/.cache/jupyter/data JUPYTER_RUNTIME_DIR=$REPO/.cache/jupyter/runtime
export TORCHINDUCTOR_CACHE_DIR=$REPO/.cache/torchinductor TRITON_CACHE_DIR=$REPO/.cache/triton
export TOKENIZERS_PARALLELISM=false WANDB_MODE=${WANDB_MODE:-disabled}

NNODES=${SLURM_NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}
MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-localhost}" 2>/dev/null | head -n1 || echo localhost)
MASTER_PORT=${MASTER_PORT:-29500}

# one launcher per node; accelerate starts GPUS_PER_NODE processes on each, papermill runs the notebook in each
srun --ntasks="$NNODES" --ntasks-per-node=1 bash -c "
  .venv/bin/accelerate launch --config_file '$ACCEL_CONFIG' \
    --num_machines $NNODES --num_processes $((NNODES * GPUS_PER_NODE)) \
    --machine_rank \$SLURM_NODEID --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT \
    -m halluc.cli run '$NOTEBOOK' '$CONFIG' run.name='$RUN_NAME'
"

#!/bin/bash
# Submit the whole pipeline as three chained Slurm jobs: data -> train -> eval.
#
#   slurm/submit.sh CONFIG [--section.key=value ...]
#
# Each job starts only when the previous one succeeded (--dependency=afterok); a failed
# job cancels the jobs waiting on it. Overrides after CONFIG go to the trainer. Prints the
# job ids; the last line reads `jobs: data=ID train=ID eval=ID` (data=skipped when the
# shards are already complete). Run it from anywhere: paths are relative to the checkout.
#
# Cluster settings (environment; every one has a default, none is site-specific):
#   ACCOUNT, QOS   passed to every job when set                          (default: cluster's)
#   PARTITION      the GPU jobs' partition (train, eval)                 (default: cluster's)
#   DATA_PARTITION the data job's partition: a CPU one (default: the cluster's default
#                  partition, never PARTITION: the tokenizer needs no GPU)
#   TRAIN_PARTITION, EVAL_PARTITION   per-job partition                  (default: PARTITION)
#   NODES=1  CPUS_PER_GPU=8                  training allocation
#   GPUS_PER_NODE  workers per node; when set, GPUs are requested as --gpus-per-node=$GPUS_PER_NODE
#   GPU_REQUEST    how GPUs are requested (default --gpus-per-node=${GPUS_PER_NODE:-8}; e.g.
#                  --gres=gpu:a100:4: the job then starts one worker per GPU Slurm gives it;
#                  set it empty on CPU-only nodes, with GPUS_PER_NODE = workers per node)
#   EVAL_GPU_REQUEST   GPUs of the eval job (default --gpus=1; empty for CPU)
#   EVAL_CPUS=8   CPUs of the eval job
#   DATA_TIME=12:00:00  TRAIN_TIME=24:00:00  EVAL_TIME=04:00:00
#   SBATCH_ARGS   extra sbatch options for every job (e.g. "--mail-type=FAIL")
# Pipeline settings:
#   RUN_DIR       default runs/<config name>
#   DATA_DIR      default: the config's data.dir
#   DATA_ARGS     options for data_prep.fineweb besides --out (default: its FineWeb-Edu
#                 sample-10BT download; e.g. "--files /datasets/fw/*.parquet")
#   SKIP_DATA     auto (default: skip when DATA_DIR holds a complete shard set) | 0 | 1
#   HELLASWAG     HellaSwag val jsonl for eval (default data/hellaswag/hellaswag_val.jsonl;
#                 installed here on the login node when missing, from HELLASWAG_FROM if set)
#   EVAL_MODE     final (default: evaluate every checkpoint once training has succeeded)
#                 | watch (start with training and evaluate each checkpoint as it appears,
#                 every EVAL_INTERVAL=300 s, until the final step is evaluated; the watcher
#                 requeues itself at its time limit while training goes on, ends when the
#                 training job ends without finishing, or after EVAL_MAX_IDLE=14400 s
#                 without a new checkpoint)
#   EVAL_ARGS     extra options for `python -m eval` (e.g. "--limit 1000")
#   LOG_DIR       job logs (default $RUN_DIR/slurm)
#   VENV, PYTHON, PROJECT_DIR   see slurm/job_env.sh
# Every job is submitted held and released together at the end, so a failed sbatch (QOS
# limit, bad partition) leaves nothing queued: the jobs already submitted are cancelled.
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 2
fi
CONFIG=$1
shift

PROJECT_DIR=${PROJECT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
[[ $CONFIG = /* ]] || CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
cd "$PROJECT_DIR"
export PROJECT_DIR

VENV=${VENV:-$PROJECT_DIR/.venv}
if [[ -f "$VENV/bin/activate" ]]; then
    set +u
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    set -u
fi
PYTHON=${PYTHON:-python3}
export VENV PYTHON PYTHONPATH="$PROJECT_DIR${PYTHONPATH:+:$PYTHONPATH}"

# Resolve the config (with the overrides) here, so a typo fails now, not after a day in the queue.
DATA_DIR=${DATA_DIR:-$("$PYTHON" -c '
import sys
from pipeline.config import ConfigError, resolve
try:
    print(resolve(sys.argv[1], sys.argv[2:]).data.dir)
except ConfigError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)' "$CONFIG" "$@")}
RUN_DIR=${RUN_DIR:-runs/$(basename "$CONFIG" .toml)}
LOG_DIR=${LOG_DIR:-$RUN_DIR/slurm}
HELLASWAG=${HELLASWAG:-data/hellaswag/hellaswag_val.jsonl}
mkdir -p "$LOG_DIR"

# GPUS_PER_NODE, when set, goes to the job (sbatch exports the environment); when not, the
# job starts one worker per GPU it was given, whatever GPU_REQUEST asked for.
if [[ -n ${GPUS_PER_NODE:-} ]]; then
    export GPUS_PER_NODE
    GPU_REQUEST=${GPU_REQUEST-"--gpus-per-node=$GPUS_PER_NODE"}
else
    GPU_REQUEST=${GPU_REQUEST-"--gpus-per-node=8"}
fi
EVAL_GPU_REQUEST=${EVAL_GPU_REQUEST-"--gpus=1"}

opt() {  # "--NAME=VALUE", or nothing when VALUE is empty
    [[ -z $2 ]] || printf -- '--%s=%s\n' "$1" "$2"
}
# ${a[@]+"${a[@]}"}: an empty array expands to nothing, also in bash < 4.4 under set -u.
mapfile -t common < <(opt account "${ACCOUNT:-}"; opt qos "${QOS:-}")
common+=(--chdir="$PROJECT_DIR" --kill-on-invalid-dep=yes --hold)
read -r -a extra <<< "${SBATCH_ARGS:-}"
common+=(${extra[@]+"${extra[@]}"})
mapfile -t data_partition < <(opt partition "${DATA_PARTITION:-}")
mapfile -t train_partition < <(opt partition "${TRAIN_PARTITION:-${PARTITION:-}}")
mapfile -t eval_partition < <(opt partition "${EVAL_PARTITION:-${PARTITION:-}}")
# Word-split on purpose: these hold zero or more sbatch options.
read -r -a gpu_request <<< "$GPU_REQUEST"
read -r -a eval_gpu_request <<< "$EVAL_GPU_REQUEST"
read -r -a data_args <<< "${DATA_ARGS:-}"
read -r -a eval_args <<< "${EVAL_ARGS:-}"
# 8 CPUs per GPU by default; on CPU-only nodes (no GPU request) per worker.
if [[ ${#gpu_request[@]} -gt 0 ]]; then
    train_cpus=(--cpus-per-gpu="${CPUS_PER_GPU:-8}")
else
    train_cpus=(--cpus-per-task="$((${CPUS_PER_GPU:-8} * ${GPUS_PER_NODE:-1}))")
fi

submitted=()
released=0
cancel_submitted() {
    if [[ $released == 0 && ${#submitted[@]} -gt 0 ]]; then
        scancel ${submitted[@]+"${submitted[@]}"} || true
        echo "error: a submission failed; cancelled the jobs submitted before it: ${submitted[*]}" >&2
    fi
}
trap cancel_submitted EXIT

submit() {  # prints the job id
    sbatch --parsable "$@" | cut -d';' -f1
}

data_job=skipped
if [[ ${SKIP_DATA:-auto} == auto ]]; then
    if "$PYTHON" -c 'import sys; from pipeline.shards import load_shard_set; load_shard_set(sys.argv[1])' \
        "$DATA_DIR" 2>/dev/null; then SKIP_DATA=1; else SKIP_DATA=0; fi
fi
if [[ $SKIP_DATA != 1 ]]; then
    data_job=$(submit ${common[@]+"${common[@]}"} ${data_partition[@]+"${data_partition[@]}"} --time="${DATA_TIME:-12:00:00}" \
        --output="$LOG_DIR/%x-%j.out" slurm/data_prep.sbatch --out "$DATA_DIR" ${data_args[@]+"${data_args[@]}"})
    submitted+=("$data_job")
    echo "data:  job $data_job  -> $DATA_DIR"
else
    echo "data:  $DATA_DIR is complete; no data job"
fi

if [[ ! -f $HELLASWAG ]]; then
    "$PYTHON" -m data_prep.hellaswag --out "$(dirname "$HELLASWAG")" ${HELLASWAG_FROM:+--from "$HELLASWAG_FROM"}
fi

after_data=()
[[ $data_job != skipped ]] && after_data=(--dependency="afterok:$data_job")
train_job=$(submit ${common[@]+"${common[@]}"} ${after_data[@]+"${after_data[@]}"} ${train_partition[@]+"${train_partition[@]}"} \
    --nodes="${NODES:-1}" ${gpu_request[@]+"${gpu_request[@]}"} ${train_cpus[@]+"${train_cpus[@]}"} \
    --time="${TRAIN_TIME:-24:00:00}" --output="$LOG_DIR/%x-%j.out" \
    slurm/train.sbatch --config "$CONFIG" --run-dir "$RUN_DIR" --data.dir="$DATA_DIR" "$@")
submitted+=("$train_job")
echo "train: job $train_job  -> $RUN_DIR"

if [[ ${EVAL_MODE:-final} == watch ]]; then
    # after: (not afterok) starts the watcher as soon as training starts. It requeues itself
    # at its own time limit while training runs (TRAIN_JOB), stops when training ends without
    # finishing (also when training was cancelled before it started), and exits once
    # train.max_steps is evaluated or after EVAL_MAX_IDLE seconds without a new checkpoint.
    eval_when=(--dependency="after:$train_job" --requeue --signal=B:USR1@120 --export="ALL,TRAIN_JOB=$train_job")
    eval_what=(--watch "$RUN_DIR" --exit-when-done --interval "${EVAL_INTERVAL:-300}"
               --max-idle "${EVAL_MAX_IDLE:-14400}")
else
    eval_when=(--dependency="afterok:$train_job")
    eval_what=(--checkpoint "$RUN_DIR" --all)
fi
eval_job=$(submit ${common[@]+"${common[@]}"} ${eval_when[@]+"${eval_when[@]}"} ${eval_partition[@]+"${eval_partition[@]}"} \
    ${eval_gpu_request[@]+"${eval_gpu_request[@]}"} --cpus-per-task="${EVAL_CPUS:-8}" --time="${EVAL_TIME:-04:00:00}" \
    --output="$LOG_DIR/%x-%j.out" \
    slurm/eval.sbatch ${eval_what[@]+"${eval_what[@]}"} --hellaswag "$HELLASWAG" --val-data "$DATA_DIR" ${eval_args[@]+"${eval_args[@]}"})
submitted+=("$eval_job")
scontrol release "$(IFS=,; echo "${submitted[*]}")"
released=1
echo "eval:  job $eval_job  -> $RUN_DIR/eval/report.md"
echo "logs:  $LOG_DIR"
echo "jobs: data=$data_job train=$train_job eval=$eval_job"

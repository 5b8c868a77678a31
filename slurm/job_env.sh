# shellcheck shell=bash
# Sourced by slurm/*.sbatch: where the project is and which Python runs it.
#
# sbatch copies a batch script into Slurm's spool directory, so a job cannot find the
# checkout from its own path; it uses PROJECT_DIR (default: the directory sbatch was run
# from). Every variable below can be set at submit time: sbatch exports the submitting
# shell's environment to the job (and to every requeued run of it).
#   PROJECT_DIR  checkout to run from            (default: $SLURM_SUBMIT_DIR)
#   VENV         virtualenv activated if present (default: $PROJECT_DIR/.venv)
#   PYTHON       interpreter                     (default: python3 from the venv or PATH)

set -euo pipefail

PROJECT_DIR=${PROJECT_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$PROJECT_DIR"

VENV=${VENV:-$PROJECT_DIR/.venv}
if [[ -f "$VENV/bin/activate" ]]; then
    set +u  # activate scripts are not written for `set -u`
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    set -u
fi
PYTHON=${PYTHON:-python3}
# A clean checkout with its dependencies installed runs without `pip install -e .`.
export PYTHONPATH="$PROJECT_DIR${PYTHONPATH:+:$PYTHONPATH}"

log() { echo "[$(date '+%F %T')] ${SLURM_JOB_NAME:-job} ${SLURM_JOB_ID:-?}: $*"; }

log "node $(hostname), restart ${SLURM_RESTART_COUNT:-0}, project $PROJECT_DIR, python $(command -v "$PYTHON")"

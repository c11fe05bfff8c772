#!/usr/bin/env bash
# Train under SLURM until done: checkpoint on the warning signal, requeue, resume.
#
#   sbatch slurm/train.sh [trainer args]                  # e.g. --preset reference
#   sbatch --time=4:00:00 --gres=gpu:1 --signal=B:USR1@120 slurm/train.sh --preset reference
#   TRAINER_RUN_DIR=gs://bucket/runs/a sbatch --export=ALL slurm/train.sh
#
# SLURM sends USR1 to this script <lead> seconds before the time limit; it is
# forwarded to the trainer, which finishes its step, commits a checkpoint and
# exits with 128+10. `python -m trainer.requeue` then decides (see its
# docstring) and runs `scontrol requeue`; the next start resumes from that step.
# Settings: TRAINER_RUN_DIR (default runs/<job name>), TRAINER_PYTHON
# (default python3), TRAINER_MAX_CRASH_RESTARTS (3), TRAINER_MAX_REQUEUES (100).
#SBATCH --job-name=trainer
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@90
#SBATCH --output=slurm-%x-%j.out
#SBATCH --cpus-per-task=2
set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

PY=${TRAINER_PYTHON:-python3}
args=("$@")
case " ${args[*]:-} " in
    *" --run-dir "*|*" --run-dir="*) ;;
    *) args=(--run-dir "${TRAINER_RUN_DIR:-runs/${SLURM_JOB_NAME:-trainer}}" "${args[@]}") ;;
esac

log() { echo "[train.sh $(date +%FT%T)] $*"; }
log "job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname -s): $PY -m trainer train ${args[*]}"

child=
forward() {
    log "received SIG$1; forwarding to the trainer (pid $child)"
    [ -n "$child" ] && kill -s "$1" "$child" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward USR2' USR2
trap 'forward TERM' TERM
trap 'forward INT' INT

"$PY" -m trainer train "${args[@]}" &
child=$!
wait "$child"; rc=$?
while kill -0 "$child" 2>/dev/null; do  # wait returns early when a trapped signal arrives
    wait "$child"; rc=$?
done
log "trainer exited with code $rc"
"$PY" -m trainer.requeue "$rc"

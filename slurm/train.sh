#!/usr/bin/env bash
# Train under SLURM until done: checkpoint on the warning signal, requeue, resume.
#
#   sbatch slurm/train.sh [trainer args]                  # e.g. --preset reference
#   sbatch --time=4:00:00 --gres=gpu:1 --signal=B:USR1@120 slurm/train.sh --preset reference
#   TRAINER_RUN_DIR=gs://bucket/runs/a sbatch slurm/train.sh   # sbatch exports the env by default
#
# SLURM sends USR1 to this script <lead> seconds before the time limit
# (--signal=B:USR1@90 below; override on the sbatch command line). It, and a
# TERM/INT/USR2 (e.g. `scancel --signal=USR1 --batch <job>` for a preemption),
# is forwarded to the trainer. A USR1 within 5 minutes of the job's end time is the
# time-limit warning: the trainer commits a checkpoint at once, trains on, and
# commits and exits at the last step that leaves a save and --notice-margin-seconds
# (5) before the end time. Any other signal: it finishes its step, commits a
# checkpoint and exits. Either way with 128+signal. A signal that comes while the trainer
# starts (before it, or in its first HOLD_S seconds, when its Python may not have its
# handlers yet and would die of it) is forwarded once those seconds are over.
# `python -m trainer.cluster.requeue <code>` then decides:
#   0 done, 2-5 bad input/unusable run  -> no requeue, exit with the code
#   128+N stopped after a checkpoint    -> `scontrol requeue`, exit 0
#   6     a worker of the job was lost  -> `scontrol requeue` (up to TRAINER_MAX_REQUEUES), exit 0;
#         (it never came, died or froze: every other worker exits within --peer-timeout-seconds,
#         default 300 s, see docs/how-to/worker-loss.md)
#   anything else (crash)               -> requeue while SLURM_RESTART_COUNT <
#                                          TRAINER_MAX_CRASH_RESTARTS, else exit with the code
# A requeued job resumes from its last checkpoint (same job id; output appended).
#
# Several tasks (sbatch --nodes=2 --ntasks-per-node=1, or --ntasks=N): one worker per
# task is started with srun; the workers find each other from SLURM's environment
# (MultiWorkerMirroredStrategy, ports from the job id) and the job requeues once,
# from this script, after srun has returned. A signal this script receives is sent
# to every task with `scancel --signal=SIG <job>` (job steps only, not this shell);
# the workers agree on the step to stop at. Instead of B:USR1 (this shell) you may
# ask for --signal=USR1@N (every task of every job step, directly): same result.
#
# Settings (environment, exported by sbatch): TRAINER_RUN_DIR (default
# runs/<job name>; passed as --run-dir unless the args have one), TRAINER_PYTHON
# (python3), TRAINER_MAX_CRASH_RESTARTS (3), TRAINER_MAX_REQUEUES (100, time-limit
# requeues). --cpus-per-task=2 suits the dev cluster; override it with sbatch.
#SBATCH --job-name=trainer
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@90
#SBATCH --output=slurm-%x-%j.out
#SBATCH --cpus-per-task=2
set -uo pipefail   # no -e: the trainer's exit code is data here
cd "${SLURM_SUBMIT_DIR:-.}"

PY=${TRAINER_PYTHON:-python3}
export PYTHONUNBUFFERED=1
args=("$@")
case " ${args[*]:-} " in
    *" --run-dir "*|*" --run-dir="*) ;;
    *) args=(--run-dir "${TRAINER_RUN_DIR:-runs/${SLURM_JOB_NAME:-trainer}}" "${args[@]}") ;;
esac

log() { echo "[train.sh $(date +%FT%T)] $*"; }
log "job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array ${SLURM_ARRAY_JOB_ID:-?}_$SLURM_ARRAY_TASK_ID)}" \
    "restart ${SLURM_RESTART_COUNT:-0} on $(hostname -s): $PY -m trainer train ${args[*]}"

tasks=${SLURM_NTASKS:-1}
launch=("$PY" -m trainer train "${args[@]}")
[ "$tasks" -gt 1 ] && launch=(srun --kill-on-bad-exit=0 "${launch[@]}")

HOLD_S=5   # from the launch until the trainer's handlers surely exist
phase=start child= pending= caught= launched=
send() {
    if [ "$tasks" -gt 1 ]; then
        scancel --signal="$1" "${SLURM_JOB_ID}"   # every task of the job step
    else
        kill -s "$1" "$child" 2>/dev/null
    fi
}
hold() {   # send $1 once the trainer has had HOLD_S seconds to install its handlers
    local left=$((launched + HOLD_S - SECONDS))
    log "received SIG$1 while the trainer starts; forwarding it in ${left} s, once its handlers exist"
    ( sleep "$left"; send "$1" ) &
}
forward() {
    caught=1
    case $phase in
        start) pending=$1; log "received SIG$1 before the trainer started; forwarding it once it can take it" ;;
        run) if [ $((SECONDS - launched)) -lt "$HOLD_S" ]; then hold "$1"; else
                 log "received SIG$1; forwarding to the trainer ($tasks task(s), pid $child)"; send "$1"; fi ;;
        *) log "received SIG$1 after the trainer exited" ;;
    esac
}
for sig in USR1 USR2 TERM INT; do trap "forward $sig" "$sig"; done

[ "$tasks" -gt 1 ] && log "$tasks tasks: one worker each, started with srun"
launched=$SECONDS
"${launch[@]}" &
child=$! phase=run
[ -n "$pending" ] && hold "$pending"
while :; do
    caught=
    wait "$child"; rc=$?
    [ -n "$caught" ] || break                   # the trainer exited
    kill -0 "$child" 2>/dev/null && continue    # a trapped signal ended `wait` early: wait again
    wait "$child"; r=$?; [ "$r" = 127 ] || rc=$r  # it exited meanwhile: its own status
    break
done
phase=done
log "trainer exited with code $rc"
"$PY" -m trainer.cluster.requeue "$rc"   # logs "requeueing job ..." / "not requeueing ..."
exit $?

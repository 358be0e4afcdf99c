#!/usr/bin/env bash
# Run DeepSeg's stages in order for one experiment, with plain bash or under Slurm.
#
#   bash DeepSeg.sh NAME [STAGE...]       e.g.  bash DeepSeg.sh demo
#   sbatch DeepSeg.sh NAME [STAGE...]     e.g.  sbatch DeepSeg.sh panarctic predict merge
#   bash DeepSeg.sh NAME sync [--dry-run]  upload what a gs:// run's bucket lacks or holds differently
#   bash DeepSeg.sh NAME check            list what the run lacks in logs/check.json; exit 1 if any
#
# NAME is an experiment in experiments/ (experiments/NAME.yaml) or a path to a YAML file.
# STAGE is any of: tiles predict merge vectorize (default: all four, in that order) and
# evaluate (run only when named: scores the run against the experiment's evaluate.reference).
# The demo's default also evaluates and then prints a report (python -m deepseg.cli summary).
# Outputs go to the experiment's output.path (default runs/NAME under the current folder).
# With no Python environment active, the first run creates .venv beside this script and
# installs DeepSeg into it (DEEPSEG_TORCH picks the torch requirement, default torch==2.13.0).
# The #SBATCH lines below are defaults; override them on the sbatch command line.
#SBATCH --job-name=deepseg
#SBATCH --time=24:00:00
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --output=deepseg-%x-%j.log
# Two minutes before the time limit Slurm signals this script, which passes it to the running
# stage: that stage cancels the job arrays it submitted and stops; rerun to continue.
#SBATCH --signal=B:USR1@120
set -euo pipefail

die() { echo "DeepSeg.sh: error: $*" >&2; exit 2; }

# Under sbatch this script runs from a copy in Slurm's spool folder: find the checkout.
find_root() {
    local here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    for dir in "${DEEPSEG_HOME:-}" "$here" "${SLURM_SUBMIT_DIR:-}" "$PWD"; do
        if [[ -n "$dir" && -f "$dir/create_tiles.py" && -d "$dir/lib/deepseg" ]]; then
            echo "$dir"; return 0
        fi
    done
    return 1
}

ensure_python() {
    # shellcheck source=lib/ensure_venv.sh
    source "$ROOT/lib/ensure_venv.sh"
    deepseg_ensure_venv "$ROOT" || die "installing DeepSeg into $ROOT/.venv failed (see above)"
}

# Each stage runs in the background, waited for, so a signal reaches it at once (bash runs a
# trap only after a foreground command ends): TERM and USR1 are passed on; Ctrl-C's SIGINT
# reaches the stage from the terminal itself.
stage_pid=0
pass_on() { if [[ $stage_pid -gt 0 ]]; then kill -s "$1" "$stage_pid" 2>/dev/null || true; fi; }
trap 'pass_on TERM' TERM
trap 'pass_on USR1' USR1
trap ':' INT

run_stage() {  # python ARGS..., waited for through signals; returns its exit status
    local status
    python "$@" &
    stage_pid=$!
    while :; do
        status=0
        wait "$stage_pid" || status=$?
        kill -0 "$stage_pid" 2>/dev/null || break  # alive (or unreaped): a trap woke the wait
    done
    stage_pid=0
    return "$status"
}

script_of() {  # the script of a stage name; status 1 for an unknown name
    case "$1" in
        tiles|create_tiles) echo create_tiles.py ;;
        predict|merge|vectorize|evaluate) echo "$1.py" ;;
        *) return 1 ;;
    esac
}

main() {
    [[ $# -ge 1 && "$1" != "-h" && "$1" != "--help" ]] || { sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0; }
    local name=$1; shift
    ROOT=$(find_root) || die "cannot find the DeepSeg checkout; set DEEPSEG_HOME"
    ensure_python
    local stages=("$@") report=0
    if [[ ${#stages[@]} -eq 0 ]]; then
        stages=(tiles predict merge vectorize)
        if [[ "$name" == "demo" ]]; then  # scored against its reference, then a short report
            stages+=(evaluate)
            report=1
        fi
    fi
    if [[ "${stages[0]}" == "sync" ]]; then
        python -m deepseg.cli sync -e "$name" "${stages[@]:1}" || die "sync failed (exit $?)"
        return 0
    fi
    if [[ "${stages[0]}" == "check" ]]; then  # exit 1: tiles, chunks or polygons are missing
        exec python -m deepseg.cli check -e "$name"
    fi
    local stage script start
    for stage in "${stages[@]}"; do  # every name checked before any stage runs
        script_of "$stage" >/dev/null || die "unknown stage '$stage' (expected: tiles predict merge vectorize evaluate, check or sync)"
    done
    if [[ "$name" == "demo" ]]; then
        python -m deepseg.cli demo-data --root "$ROOT"
    fi
    for stage in "${stages[@]}"; do
        script=$(script_of "$stage")
        echo "=== DeepSeg: $stage ($name) ===" >&2
        start=$SECONDS
        run_stage "$ROOT/$script" -e "$name" || die "stage $stage failed (exit $?); fix the error above and rerun: finished work is kept"
        echo "=== DeepSeg: $stage done in $((SECONDS - start)) s ===" >&2
    done
    if [[ $report -eq 1 ]]; then
        python -m deepseg.cli summary -e "$name" || die "the report failed (exit $?)"
    fi
}

main "$@"

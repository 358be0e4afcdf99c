# Sourced by DeepSeg.sh and tests/run.sh: make sure a Python environment with DeepSeg exists.
#
#   deepseg_ensure_venv ROOT [EXTRAS]     e.g. deepseg_ensure_venv "$root" dev
#
# An active virtualenv or conda environment is used as it is (DeepSeg is installed into it when
# missing). Otherwise ROOT/.venv is created on first use and activated. The venv is built in
# place (venvs cannot be moved after creation) and marked complete only when every install
# step succeeded, so an interrupted first run is redone rather than half-used. The marker
# records the extras and pyproject.toml's hash: a changed dependency list, or an extra not
# installed yet, reinstalls (keeping the extras installed before).
# DEEPSEG_TORCH picks the torch requirement (default torch==2.13.0; on a site with its own
# wheel index, e.g. DEEPSEG_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126").

_deepseg_has_extras() {  # INSTALLED WANTED: each comma-separated WANTED extra is in INSTALLED
    local want
    for want in ${2//,/ }; do
        [[ ",$1," == *",$want,"* ]] || return 1
    done
}

deepseg_ensure_venv() {
    local root=$1 extras=${2:-}
    local spec=$root
    [[ -n "$extras" ]] && spec="$root[$extras]"
    if [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" ]]; then
        if [[ -n "$extras" ]] || ! python -c "import deepseg" 2>/dev/null; then
            python -m pip install -q -e "$spec" || return 1
        fi
        return 0
    fi
    local venv=$root/.venv hash marker installed="" union extra
    hash=$(cksum < "$root/pyproject.toml" | cut -d' ' -f1)
    marker=$(cat "$venv/.deepseg-installed" 2>/dev/null)
    if [[ "$marker" == extras=* ]]; then
        installed=${marker#extras=}
        installed=${installed%% pyproject=*}
    fi
    if [[ "$marker" != "extras=$installed pyproject=$hash" ]] || ! _deepseg_has_extras "$installed" "$extras"; then
        # the extras installed before are kept: the demo (none) and the tests (dev) share one venv
        union=$installed
        for extra in ${extras//,/ }; do
            _deepseg_has_extras "$union" "$extra" || union=${union:+$union,}$extra
        done
        spec=$root
        [[ -n "$union" ]] && spec="$root[$union]"
        echo "installing DeepSeg${union:+ [$union]} into $venv (first run only, a few minutes)" >&2
        if [[ ! -x "$venv/bin/python" ]] || [[ ! -f "$venv/.deepseg-installed" && -e "$venv" ]]; then
            rm -rf "$venv"
            python3 -m venv "$venv" || return 1
        fi
        # shellcheck disable=SC2086  # DEEPSEG_TORCH may carry pip options
        "$venv/bin/python" -m pip install -q ${DEEPSEG_TORCH:-torch==2.13.0} || return 1
        "$venv/bin/python" -m pip install -q -e "$spec" || return 1
        echo "extras=$union pyproject=$hash" > "$venv/.deepseg-installed"
    fi
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
}

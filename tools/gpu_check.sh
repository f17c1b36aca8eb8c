#!/usr/bin/env bash
# The GPU verification of geeps in one command (docs/gpu.md):
#
#     tools/gpu_check.sh                 # on a machine with an NVIDIA GPU, at most 8 minutes
#     tools/gpu_check.sh --dry-run       # on a CPU: CuPy replaced by the host-compiled kernels
#     tools/gpu_check.sh --out DIR       # where the report goes (default: $OUT, else .gpu-check/)
#
# Runs tests/gpu (every CuPy kernel against its NumPy twin on the device, the memory
# manager under a budget with real transfers, training on CUDA against the CPU, a
# two-worker BSP job on the GPU, a two-worker co-located job whose shards apply Adam on
# the GPU) and the GPU section of `geeps bench` (with a shard's update on the device
# against the NumPy twins), then writes one report: DIR/report.md (and report.json).
#
# Needs: python3 with numpy, torch and CuPy for the machine's CUDA (cupy-cuda13x), pyyaml,
# prometheus-client, scikit-learn and pytest. pyzmq, orjson and jsonschema (and their
# dependencies) are installed from wheels in .gpu-wheels/ (tools/gpu_wheels.sh prepares
# them where there is network) into .gpu-wheels/site, with `pip --no-index`: no network,
# nothing installed outside the checkout. geeps itself runs from the checkout.
#
# Exit status: 0 passed; 1 a check failed; 2 usage; 3 no usable GPU here; 4 a module or
# tool is missing; 5 the CUDA stack is broken; 124 out of time.
set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
DRY=0
DEST=${OUT:-}
PY=${PYTHON:-python3}
LIMIT=${GPU_CHECK_LIMIT_S:-480}
WHEELS=${GEEPS_GPU_WHEELS:-$REPO/.gpu-wheels}

say() { echo "gpu_check: $*"; }
stop() { local code=$1; shift; say "$*"; say "exit status $code"; exit "$code"; }
usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) [ $# -ge 2 ] || { usage >&2; exit 2; }; DEST=$2; shift ;;
        --out=*) DEST=${1#--out=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
DEST=${DEST:-$REPO/.gpu-check}
mkdir -p "$DEST" || stop 4 "cannot create the report folder $DEST"
DEST=$(cd "$DEST" && pwd)
ENV_TXT="$DEST/env.txt"
rm -f "$DEST/pytest.xml" "$DEST/tests.json" "$DEST/bench.json" "$DEST/report.md" "$DEST/report.json"

left() { echo $(( LIMIT - SECONDS )); }
run_for() {     # run_for SECONDS CMD...: the command under a time limit when `timeout` exists
    local t=$1; shift
    [ "$t" -gt 5 ] || stop 124 "out of time (limit ${LIMIT}s) before: $*"
    if command -v timeout >/dev/null 2>&1; then timeout -k 10 "$t" "$@"; else "$@"; fi
}

cd "$REPO" || stop 4 "cannot enter $REPO"
export PYTHONPATH="$REPO/runtime:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
command -v "$PY" >/dev/null 2>&1 || stop 4 "no $PY on PATH (set PYTHON=...)"

say "$( [ $DRY = 1 ] && echo 'DRY RUN: ' )checking geeps at $REPO, report in $DEST, limit ${LIMIT}s"
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host: $(uname -srm)"
    echo "python: $("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)' 2>&1)"
    if command -v nvidia-smi >/dev/null 2>&1; then
        echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | paste -sd ';' -)"
        echo "nvidia-smi: $(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -1)"
    else
        echo "nvidia-smi: not found"
    fi
} > "$ENV_TXT"
sed 's/^/  found: /' "$ENV_TXT"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || stop 4 "geeps needs Python >= 3.10 ($PY is $("$PY" -c 'import sys; print(sys.version.split()[0])'))"

if [ $DRY = 1 ]; then
    export GEEPS_GPU_DRYRUN=1
    command -v "${CXX:-g++}" >/dev/null 2>&1 || stop 4 "the dry run compiles the CUDA sources with ${CXX:-g++}, which is not on PATH"
    echo "mode: dry run (CuPy replaced by geeps.backend.hostcupy)" >> "$ENV_TXT"
    "$PY" tools/gpu_env.py deps | tee -a "$ENV_TXT"
    rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || stop "$rc" "the modules the check imports are not all here"
else
    unset GEEPS_GPU_DRYRUN
    say "the GPU, CUDA, CuPy and torch:"
    "$PY" tools/gpu_env.py gpu | tee -a "$ENV_TXT"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) ;;
        3) stop 3 "no usable GPU here (see the problem above); tools/gpu_check.sh --dry-run checks this script on a CPU" ;;
        *) stop "$rc" "the GPU cannot run the check (see the problem above)" ;;
    esac
    # geeps' own dependencies that the GPU machine lacks: from the prepared wheels.
    if ! "$PY" -c 'import zmq, orjson, jsonschema' >/dev/null 2>&1; then
        ls "$WHEELS"/*.whl >/dev/null 2>&1 \
            || stop 4 "pyzmq, orjson or jsonschema is missing and $WHEELS holds no wheels: run tools/gpu_wheels.sh on a machine with network and bring .gpu-wheels/ with the checkout"
        SITE="$WHEELS/site"
        say "installing pyzmq, orjson, jsonschema from $WHEELS into $SITE (no network)"
        if "$PY" -m pip --version >/dev/null 2>&1; then
            # The machine's pip configuration stays out of it (an index, require-virtualenv).
            PIP_CONFIG_FILE=/dev/null PIP_REQUIRE_VIRTUALENV=0 PIP_DISABLE_PIP_VERSION_CHECK=1 \
                "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --target "$SITE" \
                --upgrade pyzmq orjson jsonschema 2>&1 | tail -5
            [ "${PIPESTATUS[0]}" = 0 ] || stop 4 "pip could not install the wheels of $WHEELS (are they for this Python, $("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])'), and manylinux x86-64?)"
        else
            # No pip: these wheels need no build and no scripts, so unpacking them is an install.
            say "no pip for $PY: unpacking the wheels into $SITE"
            "$PY" - "$WHEELS" "$SITE" <<'PYEOF' || stop 4 "could not unpack the wheels of $WHEELS"
import glob, os, sys, zipfile
src, site = sys.argv[1], sys.argv[2]
tag = "cp%d%d" % sys.version_info[:2]
os.makedirs(site, exist_ok=True)
for w in sorted(glob.glob(os.path.join(src, "*.whl"))):
    parts = os.path.basename(w)[:-4].split("-")
    if parts[-3] not in (tag, "py3", "py2.py3") and parts[-2] not in ("abi3", "none"):
        continue
    zipfile.ZipFile(w).extractall(site)
    print("  unpacked", os.path.basename(w))
PYEOF
        fi
        export PYTHONPATH="$PYTHONPATH:$SITE"
    fi
    say "the modules geeps and the tests import:"
    "$PY" tools/gpu_env.py deps | tee -a "$ENV_TXT"
    rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || stop "$rc" "a module is missing (see above)"
    say "geeps' CuPy backend (compiles its kernels):"
    run_for 120 "$PY" tools/gpu_env.py backend | tee -a "$ENV_TXT"
    rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || stop "$rc" "geeps' CuPy backend cannot start (see above)"
fi

say "tests/gpu ($(left)s left)"
GEEPS_GPU_REPORT="$DEST/tests.json" run_for $(( $(left) - 100 )) \
    "$PY" -m pytest -q -p no:cacheprovider -rs --junitxml="$DEST/pytest.xml" tests/gpu
test_rc=$?
[ "$test_rc" = 124 ] && say "tests/gpu ran out of time"

say "geeps bench, GPU section ($(left)s left)"
bench_args=(--json "$DEST/bench.json")
if [ $DRY = 1 ]; then bench_args+=(--dry-run); else bench_args+=(--strict); fi
run_for $(( $(left) - 10 )) "$PY" bench/bench_gpu.py "${bench_args[@]}"
bench_rc=$?
[ "$bench_rc" = 124 ] && say "the bench ran out of time"

"$PY" tools/gpu_report.py "$DEST" > /dev/null
report_rc=$?
say "report: $DEST/report.md"
grep -E '^## Tests|^- FAILED|^\*\*Result' "$DEST/report.md" 2>/dev/null | sed 's/^/  /'
if [ "$test_rc" = 124 ] || [ "$bench_rc" = 124 ]; then stop 124 "out of time (limit ${LIMIT}s)"; fi
[ "$report_rc" = 0 ] && [ "$test_rc" = 0 ] || stop 1 "the GPU check FAILED (tests exit $test_rc, bench exit $bench_rc)"
say "PASSED in ${SECONDS}s"

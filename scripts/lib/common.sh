# shellcheck shell=bash
# Helpers shared by scripts/services and the per-service files in scripts/lib/.
# Sourced, never run. Expects REPO_ROOT to be set by the caller.

KGATE_CACHE_DIR="${KGATE_CACHE_DIR:-${HOME}/.cache/kgate}"
KGATE_STATE_DIR="${KGATE_STATE_DIR:-${REPO_ROOT}/.state}"

log() { printf '%s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# now_s: seconds since the epoch (integer).
now_s() { date +%s; }

# port_in_use PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
  # shellcheck disable=SC2016 # $1 is expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

# port_owner PORT: best-effort description of the process listening on PORT.
port_owner() {
  local port="$1" line=""
  if command -v ss >/dev/null 2>&1; then
    line="$(ss -Hltnp "sport = :${port}" 2>/dev/null | head -n 1 || true)"
  fi
  if [[ -n "$line" ]]; then
    printf '%s' "$line" | sed -E 's/.*users:\(\((.*)\)\).*/\1/'
  else
    printf 'unknown process'
  fi
}

# pid_cmdline PID: the command line of PID with spaces between arguments (empty if gone).
pid_cmdline() {
  local pid="$1"
  [[ -r "/proc/${pid}/cmdline" ]] || return 0
  tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null || true
}

pid_alive() {
  local pid="$1"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # A zombie is not alive for our purposes.
  local state
  state="$(awk '{print $3}' "/proc/${pid}/stat" 2>/dev/null || true)"
  [[ "$state" != "Z" ]]
}

# read_pidfile FILE: prints the pid stored in FILE, or nothing.
read_pidfile() {
  local f="$1" pid=""
  [[ -f "$f" ]] || return 0
  pid="$(tr -dc '0-9' <"$f" 2>/dev/null || true)"
  printf '%s' "$pid"
}

# stop_pid PID NAME [GRACE_SECONDS]: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local pid="$1" name="$2" grace="${3:-30}" waited=0
  pid_alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while pid_alive "$pid"; do
    if ((waited >= grace * 10)); then
      log "${name}: still running after ${grace}s, sending SIGKILL to pid ${pid}"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      break
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  ! pid_alive "$pid"
}

# java_major: the major version of the java on PATH (e.g. 17), or nothing.
java_major() {
  local v
  command -v java >/dev/null 2>&1 || return 0
  v="$(java -version 2>&1 | sed -n -E 's/.*version "([0-9]+)(\.[0-9]+)?.*".*/\1/p' | sed -n 1p)"
  # Java 8 and older print "1.8.0_xxx".
  if [[ "$v" == "1" ]]; then
    v="$(java -version 2>&1 | sed -n -E 's/.*version "1\.([0-9]+).*/\1/p' | sed -n 1p)"
  fi
  printf '%s' "$v"
}

require_java17() {
  local major
  command -v java >/dev/null 2>&1 || die "java not found on PATH (Java 17 or later is needed; Debian: apt-get install openjdk-17-jdk-headless)"
  major="$(java_major)"
  [[ -n "$major" && "$major" -ge 17 ]] ||
    die "Java 17 or later is needed, found: $(java -version 2>&1 | sed -n 1p)"
}

# with_lock FILE CMD...: run CMD while holding an exclusive lock on FILE (if flock exists).
# The lock is fd 9: a long-lived child (a server) must be started with 9>&- .
with_lock() {
  local lockfile="$1"
  shift
  mkdir -p "$(dirname "$lockfile")"
  if command -v flock >/dev/null 2>&1; then
    (
      flock -w "${KGATE_LOCK_TIMEOUT:-600}" 9 ||
        die "waited ${KGATE_LOCK_TIMEOUT:-600}s for the lock ${lockfile}; another scripts/services is running? (fuser -v ${lockfile})"
      "$@"
    ) 9>"$lockfile"
  else
    "$@"
  fi
}

# rel PATH: PATH relative to the repo root when it is inside it (for nicer messages).
rel() {
  local p="$1"
  case "$p" in
  "${REPO_ROOT}"/*) printf '%s' "${p#"${REPO_ROOT}"/}" ;;
  *) printf '%s' "$p" ;;
  esac
}

# shellcheck shell=bash
# The `registry` service of scripts/services: Apicurio Registry 3.x (a Confluent-compatible
# schema registry at /apis/ccompat/v7), run from Maven Central's `-all.tar.gz` with in-memory H2
# storage. Sourced by scripts/services; provides registry_up, registry_down [--wipe],
# registry_status, registry_logs and registry_help.
#
# Java: Apicurio 3.3 is compiled for Java 21. The newest Java >= 21 found (REGISTRY_JAVA,
# JAVA_HOME, PATH, /usr/lib/jvm/*) runs 3.3.3; with only Java 17 on the machine (Debian 12's
# openjdk-17) the last release built for 17, 3.0.9, runs instead. Both serve the same ccompat API.

REGISTRY_PORT="${REGISTRY_PORT:-8081}"
[[ "$REGISTRY_PORT" =~ ^[0-9]+$ ]] || die "REGISTRY_PORT must be a port number, got '${REGISTRY_PORT}'"
# Quarkus' management interface (health, metrics) listens on 0.0.0.0:9000 by default - kgate's
# metrics port - and cannot be turned off at run time (a build-time property): move it.
REGISTRY_MANAGEMENT_PORT="${REGISTRY_MANAGEMENT_PORT:-$((REGISTRY_PORT + 1000))}"
[[ "$REGISTRY_MANAGEMENT_PORT" =~ ^[0-9]+$ ]] || die "REGISTRY_MANAGEMENT_PORT must be a port number, got '${REGISTRY_MANAGEMENT_PORT}'"
REGISTRY_HOST="127.0.0.1"
REGISTRY_READY_TIMEOUT="${REGISTRY_READY_TIMEOUT:-180}"
REGISTRY_HEAP_OPTS="${REGISTRY_HEAP_OPTS:--Xmx512m -Xms128m}"
REGISTRY_VERSION_NEW="3.3.3" # needs Java 21+
REGISTRY_VERSION_J17="3.0.9" # the last one built for Java 17
REGISTRY_MAVEN_BASE="${REGISTRY_MAVEN_BASE:-https://repo1.maven.org/maven2}"

REGISTRY_STATE="${KGATE_STATE_DIR}/registry-${REGISTRY_PORT}"
REGISTRY_PIDFILE="${REGISTRY_STATE}/registry.pid"
REGISTRY_LOG="${REGISTRY_STATE}/registry.log"
REGISTRY_CCOMPAT_PATH="/apis/ccompat/v7"

registry_help() {
  cat <<EOF
  registry  Apicurio Registry ${REGISTRY_VERSION_NEW} (on Java 21+; ${REGISTRY_VERSION_J17} when only Java 17 is
            found), in-memory storage: every start is empty. Confluent-compatible API at
            http://${REGISTRY_HOST}:\$REGISTRY_PORT${REGISTRY_CCOMPAT_PATH} (export it as KGATE_REGISTRY_URL);
            ids are content ids (the same schema text has one id in every subject, as in
            Confluent's registry); subjects can be deleted (soft and ?permanent=true).
            Download: \$KGATE_CACHE_DIR/apicurio-registry-VERSION/ (once, ~160 MB, checksum verified).
            State: \$KGATE_STATE_DIR/registry-\$REGISTRY_PORT/ (registry.log, registry.pid).
            Env:   REGISTRY_PORT (8081), REGISTRY_MANAGEMENT_PORT (REGISTRY_PORT+1000: Quarkus
                   health/metrics, kept off 9000), REGISTRY_READY_TIMEOUT seconds (180),
                   REGISTRY_HEAP_OPTS ("-Xmx512m -Xms128m"), REGISTRY_JAVA (a java binary),
                   REGISTRY_VERSION (${REGISTRY_VERSION_NEW} or ${REGISTRY_VERSION_J17}; default: by Java version).
EOF
}

registry_addr() { printf '%s:%s' "$REGISTRY_HOST" "$REGISTRY_PORT"; }
registry_url() { printf 'http://%s%s' "$(registry_addr)" "$REGISTRY_CCOMPAT_PATH"; }

# java_major_of JAVA: the major version of that java binary, or nothing.
java_major_of() {
  local v
  v="$("$1" -version 2>&1 | sed -n -E 's/.*version "([0-9]+)(\.[0-9]+)?.*".*/\1/p' | sed -n 1p)"
  [[ "$v" == "1" ]] && v=8
  printf '%s' "$v"
}

# Sets REGISTRY_JAVA_BIN and REGISTRY_VERSION (if not given) from the Java versions found.
registry_pick_java() {
  if [[ -n "${REGISTRY_JAVA:-}" ]]; then
    [[ -x "$REGISTRY_JAVA" ]] || die "registry: REGISTRY_JAVA=${REGISTRY_JAVA} is not an executable"
    REGISTRY_JAVA_BIN="$REGISTRY_JAVA"
  else
    local c best="" best_major=0 major
    for c in "${JAVA_HOME:+${JAVA_HOME}/bin/java}" "$(command -v java 2>/dev/null || true)" /usr/lib/jvm/*/bin/java; do
      [[ -n "$c" && -x "$c" ]] || continue
      major="$(java_major_of "$c")"
      [[ "$major" =~ ^[0-9]+$ ]] || continue
      if ((major > best_major)); then
        best="$c"
        best_major="$major"
      fi
    done
    [[ -n "$best" ]] || die "registry: no java found (Java 17 or later is needed; Debian: apt-get install openjdk-17-jdk-headless)"
    REGISTRY_JAVA_BIN="$best"
  fi
  local m
  m="$(java_major_of "$REGISTRY_JAVA_BIN")"
  [[ "$m" =~ ^[0-9]+$ && "$m" -ge 17 ]] || die "registry: Java 17 or later is needed, ${REGISTRY_JAVA_BIN} is $("$REGISTRY_JAVA_BIN" -version 2>&1 | sed -n 1p)"
  if [[ -z "${REGISTRY_VERSION:-}" ]]; then
    if ((m >= 21)); then
      REGISTRY_VERSION="$REGISTRY_VERSION_NEW"
    else
      REGISTRY_VERSION="$REGISTRY_VERSION_J17"
      log "registry: only Java ${m} found (${REGISTRY_JAVA_BIN}); Apicurio ${REGISTRY_VERSION_NEW} needs 21, running ${REGISTRY_VERSION_J17} (set REGISTRY_JAVA to a Java 21+ for ${REGISTRY_VERSION_NEW})"
    fi
  elif [[ "$REGISTRY_VERSION" != 3.0.* ]] && ((m < 21)); then
    die "registry: Apicurio ${REGISTRY_VERSION} needs Java 21 or later, ${REGISTRY_JAVA_BIN} is Java ${m}; set REGISTRY_JAVA to a Java 21+ or REGISTRY_VERSION=${REGISTRY_VERSION_J17}"
  fi
  REGISTRY_HOME="${KGATE_CACHE_DIR}/apicurio-registry-${REGISTRY_VERSION}"
}

# ---------------------------------------------------------------- download (once, cached)

registry_fetch_locked() {
  [[ -f "${REGISTRY_HOME}/.complete" ]] && return 0
  command -v curl >/dev/null 2>&1 || die "curl not found (Debian: apt-get install curl); it downloads Apicurio Registry once"
  local name="apicurio-registry-app-${REGISTRY_VERSION}-all.tar.gz"
  local url="${REGISTRY_MAVEN_BASE}/io/apicurio/apicurio-registry-app/${REGISTRY_VERSION}/${name}"
  local work="${REGISTRY_HOME}.tmp" t0 want got
  t0="$(now_s)"
  rm -rf "$work"
  mkdir -p "$work/unpacked"
  log "registry: downloading ${url} (once, ~160 MB) ..."
  # --retry-all-errors: also retry resets and 5xx answers, which a busy mirror gives.
  if ! curl -fsSL --retry 6 --retry-delay 5 --retry-all-errors --connect-timeout 30 \
    --max-time 900 -o "${work}/${name}" "$url"; then
    rm -rf "$work"
    die "registry: downloading ${url} failed after 6 retries; check the network or proxy (curl -I ${url}), or set REGISTRY_MAVEN_BASE to a Maven Central mirror"
  fi
  want="$(curl -fsSL --retry 6 --retry-delay 5 --retry-all-errors --connect-timeout 30 "${url}.sha1" | cut -c1-40)" ||
    die "registry: downloading ${url}.sha1 failed"
  got="$(sha1sum "${work}/${name}" | cut -d' ' -f1)"
  if [[ "$want" != "$got" ]]; then
    rm -rf "$work"
    die "registry: ${name} is corrupt (sha1 ${got}, Maven Central says ${want}); run 'scripts/services up registry' again"
  fi
  tar -xzf "${work}/${name}" -C "${work}/unpacked" || die "registry: unpacking ${name} failed"
  rm -f "${work}/${name}"
  rm -rf "$REGISTRY_HOME"
  mv "${work}/unpacked" "$REGISTRY_HOME"
  rm -rf "$work"
  date -u +%Y-%m-%dT%H:%M:%SZ >"${REGISTRY_HOME}/.complete"
  log "registry: Apicurio Registry ${REGISTRY_VERSION} in $(du -sh "$REGISTRY_HOME" | cut -f1), in $(($(now_s) - t0))s"
}

# The runnable jar: quarkus-run.jar at the root (3.3), under quarkus-app/ (3.1-3.2), or the
# legacy *-runner.jar (3.0).
registry_jar() {
  local j
  for j in "${REGISTRY_HOME}/quarkus-run.jar" "${REGISTRY_HOME}/quarkus-app/quarkus-run.jar" \
    "${REGISTRY_HOME}"/apicurio-registry-app-*-runner.jar; do
    [[ -f "$j" ]] && printf '%s' "$j" && return 0
  done
  die "registry: no quarkus-run.jar or *-runner.jar in ${REGISTRY_HOME}; remove that folder to download again"
}

# ---------------------------------------------------------------- state

registry_running_pid() {
  local pid cmd
  pid="$(read_pidfile "$REGISTRY_PIDFILE")"
  [[ -n "$pid" ]] || return 0
  pid_alive "$pid" || return 0
  cmd="$(pid_cmdline "$pid")"
  case "$cmd" in
  *"-Dkgate.service=registry-${REGISTRY_PORT} "*) printf '%s' "$pid" ;;
  *) ;;
  esac
}

# registry_http_code: the HTTP status of GET /apis/ccompat/v7/subjects (000 when unreachable).
registry_http_code() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$(registry_url)/subjects" 2>/dev/null || true
}

# ---------------------------------------------------------------- commands

registry_up() { with_lock "${REGISTRY_STATE}.lock" registry_up_locked; }
registry_down() { with_lock "${REGISTRY_STATE}.lock" registry_down_locked "$@"; }

registry_up_locked() {
  local pid t0 jar
  t0="$(now_s)"
  pid="$(registry_running_pid)"
  if [[ -n "$pid" ]]; then
    log "registry already running at $(registry_url) (pid ${pid})"
    return 0
  fi
  rm -f "$REGISTRY_PIDFILE"
  service_ports_free registry "$REGISTRY_STATE" "REGISTRY_PORT / REGISTRY_MANAGEMENT_PORT" \
    "$REGISTRY_PORT" "$REGISTRY_MANAGEMENT_PORT"
  registry_pick_java
  mkdir -p "$KGATE_CACHE_DIR"
  [[ -f "${REGISTRY_HOME}/.complete" ]] || with_lock "${REGISTRY_HOME}.lock" registry_fetch_locked
  jar="$(registry_jar)"
  mkdir -p "$REGISTRY_STATE"
  : >"$REGISTRY_LOG"

  log "registry: starting Apicurio Registry ${REGISTRY_VERSION} at $(registry_url) on $("$REGISTRY_JAVA_BIN" -version 2>&1 | sed -n 1p), log $(rel "$REGISTRY_LOG")"
  # -Dkgate.service tags the process so that status/down recognise it; the tmp dirs keep H2
  # snapshots and imports out of /tmp.
  # shellcheck disable=SC2086 # REGISTRY_HEAP_OPTS is a list of JVM flags
  (
    cd "$REGISTRY_STATE" || exit 1
    exec setsid "$REGISTRY_JAVA_BIN" $REGISTRY_HEAP_OPTS -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Djava.awt.headless=true \
      "-Dkgate.service=registry-${REGISTRY_PORT}" \
      -Dquarkus.http.host="$REGISTRY_HOST" \
      -Dquarkus.http.port="$REGISTRY_PORT" \
      -Dquarkus.management.host="$REGISTRY_HOST" \
      -Dquarkus.management.port="$REGISTRY_MANAGEMENT_PORT" \
      -Dquarkus.otel.sdk.disabled=true \
      -Dapicurio.ccompat.legacy-id-mode.enabled=false \
      -Dapicurio.rest.deletion.group.enabled=true \
      -Dapicurio.rest.deletion.artifact.enabled=true \
      -Dapicurio.rest.deletion.artifact-version.enabled=true \
      -Dapicurio.storage.snapshot.location="$REGISTRY_STATE" \
      -Dapicurio.import.work-dir="$REGISTRY_STATE" \
      -jar "$jar"
  ) >>"$REGISTRY_LOG" 2>&1 </dev/null 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$REGISTRY_PIDFILE"

  printf 'registry: waiting for GET %s/subjects to answer 200 (up to %ss) ' "$(registry_url)" "$REGISTRY_READY_TIMEOUT" >&2
  local rc=0 code deadline
  deadline=$(($(now_s) + REGISTRY_READY_TIMEOUT))
  while :; do
    if ! pid_alive "$pid"; then
      rc=3
      break
    fi
    code="$(registry_http_code)"
    [[ "$code" == "200" ]] && break
    if (($(now_s) >= deadline)); then
      rc=1
      break
    fi
    printf '.' >&2
    sleep 1
  done
  printf '\n' >&2
  case "$rc" in
  0) ;;
  3) service_start_failed registry "$pid" "$REGISTRY_PIDFILE" \
    "the Java process (pid ${pid}) exited during start-up" "$REGISTRY_LOG" ;;
  *) service_start_failed registry "$pid" "$REGISTRY_PIDFILE" \
    "GET $(registry_url)/subjects did not answer 200 within ${REGISTRY_READY_TIMEOUT}s (last: ${code:-none})" "$REGISTRY_LOG" ;;
  esac
  log "registry ready at $(registry_url) (pid ${pid}, Apicurio ${REGISTRY_VERSION}) in $(($(now_s) - t0))s"
}

registry_down_locked() {
  service_stop registry "$(registry_addr)" "$REGISTRY_PIDFILE" "$(registry_running_pid)" 30
  if [[ "${1:-}" == "--wipe" && -d "$REGISTRY_STATE" ]]; then
    rm -rf "$REGISTRY_STATE"
    log "registry: removed $(rel "$REGISTRY_STATE") (logs; the data is in memory only)"
  fi
}

registry_status() {
  local pid line
  pid="$(registry_running_pid)"
  if [[ -n "$pid" ]]; then
    line="$(printf '%-9s running  pid %-7s %s  state %s' registry "$pid" "$(registry_url)" "$(rel "$REGISTRY_STATE")")"
    [[ "$(registry_http_code)" == "200" ]] || line+="  (not answering yet)"
  else
    line="$(printf '%-9s stopped  %-11s %s' registry "" "$(registry_url)")"
    if port_in_use "$REGISTRY_PORT"; then
      line+="  (port in use by another process: $(port_owner "$REGISTRY_PORT"))"
    fi
  fi
  printf '%s\n' "$line"
}

registry_logs() {
  [[ -f "$REGISTRY_LOG" ]] || die "registry: no log yet at ${REGISTRY_LOG}"
  printf '==> %s <==\n' "$REGISTRY_LOG"
  tail -n "${KGATE_LOG_LINES:-50}" "$REGISTRY_LOG"
}

# shellcheck shell=bash
# The `kafka` service of scripts/services: Apache Kafka, single-node KRaft (broker+controller),
# run from Maven Central jars with the machine's Java 17+. Sourced by scripts/services (after
# scripts/lib/tls.sh: the secure listeners use its test CA).
#
# Interface every service file provides (NAME = the service name):
#   NAME_up, NAME_down [--wipe], NAME_status, NAME_logs, NAME_help

KAFKA_VERSION="4.1.1"
KAFKA_SCALA="2.13"
KAFKA_LOG4J_SLF4J_VERSION="2.24.3"

KAFKA_PORT="${KAFKA_PORT:-9092}"
[[ "$KAFKA_PORT" =~ ^[0-9]+$ ]] || die "KAFKA_PORT must be a port number, got '${KAFKA_PORT}'"
KAFKA_HOST="127.0.0.1"
KAFKA_READY_TIMEOUT="${KAFKA_READY_TIMEOUT:-90}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx1G -Xms512m}"

KAFKA_HOME_CACHE="${KGATE_CACHE_DIR}/kafka-${KAFKA_VERSION}"
KAFKA_LIBS="${KAFKA_HOME_CACHE}/libs"
KAFKA_STAMP="${KAFKA_HOME_CACHE}/.libs-complete"
KAFKA_STATE="${KGATE_STATE_DIR}/kafka-${KAFKA_PORT}"
KAFKA_PIDFILE="${KAFKA_STATE}/kafka.pid"
KAFKA_DATA="${KAFKA_STATE}/data"
KAFKA_LOGDIR="${KAFKA_STATE}/logs"

# The controller port: KAFKA_CONTROLLER_PORT if set; else the one this state folder was
# formatted with; else KAFKA_PORT+1 (9093 for the default 9092).
if [[ -z "${KAFKA_CONTROLLER_PORT:-}" ]]; then
  if [[ -f "${KAFKA_STATE}/ports" ]]; then
    KAFKA_CONTROLLER_PORT="$(awk '{print $2}' "${KAFKA_STATE}/ports")"
  else
    KAFKA_CONTROLLER_PORT="$((KAFKA_PORT + 1))"
  fi
fi
[[ "$KAFKA_CONTROLLER_PORT" =~ ^[0-9]+$ ]] || die "KAFKA_CONTROLLER_PORT must be a port number, got '${KAFKA_CONTROLLER_PORT}'"
[[ "$KAFKA_CONTROLLER_PORT" != "$KAFKA_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ (both ${KAFKA_PORT})"

# The secure listeners, next to PLAINTEXT: SASL_SSL (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN) and SSL
# with required client certificates, both with the test CA of scripts/lib/tls.sh. When not set:
# the ones this state folder last started with; else 9094 and 9095 for the default broker, and
# off for another KAFKA_PORT (a second broker, like the outage test's on free ports, stays
# PLAINTEXT only). `off` turns one off.
if [[ -f "${KAFKA_STATE}/secure-ports" ]]; then
  read -r kafka_had_sasl_ssl kafka_had_ssl <"${KAFKA_STATE}/secure-ports" || true
  KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-${kafka_had_sasl_ssl:-}}"
  KAFKA_SSL_PORT="${KAFKA_SSL_PORT:-${kafka_had_ssl:-}}"
fi
if [[ "$KAFKA_PORT" == 9092 ]]; then
  KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-9094}"
  KAFKA_SSL_PORT="${KAFKA_SSL_PORT:-9095}"
else
  KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-off}"
  KAFKA_SSL_PORT="${KAFKA_SSL_PORT:-off}"
fi
[[ "$KAFKA_SASL_SSL_PORT" =~ ^([0-9]+|off)$ ]] || die "KAFKA_SASL_SSL_PORT must be a port number or 'off', got '${KAFKA_SASL_SSL_PORT}'"
[[ "$KAFKA_SSL_PORT" =~ ^([0-9]+|off)$ ]] || die "KAFKA_SSL_PORT must be a port number or 'off', got '${KAFKA_SSL_PORT}'"
kafka_ports_distinct() {
  local seen=" " p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SASL_SSL_PORT" "$KAFKA_SSL_PORT"; do
    [[ "$p" == off ]] && continue
    [[ "$seen" != *" ${p} "* ]] ||
      die "kafka: port ${p} is given twice (KAFKA_PORT ${KAFKA_PORT}, KAFKA_CONTROLLER_PORT ${KAFKA_CONTROLLER_PORT}, KAFKA_SASL_SSL_PORT ${KAFKA_SASL_SSL_PORT}, KAFKA_SSL_PORT ${KAFKA_SSL_PORT})"
    seen+="${p} "
  done
}
kafka_ports_distinct
# The SASL user of the secure listeners: SCRAM credentials made at format time, and PLAIN.
KAFKA_SASL_USER="kgate"
KAFKA_SASL_PASSWORD="kgate-secret"

kafka_help() {
  cat <<EOF
  kafka     Apache Kafka ${KAFKA_VERSION}, single-node KRaft (broker + controller).
            PLAINTEXT on ${KAFKA_HOST}:\$KAFKA_PORT, controller on ${KAFKA_HOST}:\$KAFKA_CONTROLLER_PORT,
            and two secure listeners with the test CA (below; scripts/test exports them):
              SASL_SSL on ${KAFKA_HOST}:\$KAFKA_SASL_SSL_PORT: SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN,
                user ${KAFKA_SASL_USER}, password ${KAFKA_SASL_PASSWORD} (SCRAM credentials made at format time);
              SSL on ${KAFKA_HOST}:\$KAFKA_SSL_PORT: TLS with a required client certificate
                (tls/client.pem + tls/client.key).
            Test CA: \$KGATE_STATE_DIR/tls/ (ca.pem, server.pem/.key with SAN localhost and
                   127.0.0.1, client.pem/.key), made once with openssl (scripts/lib/tls.sh);
                   clients trust ca.pem. Java clients' settings: kafka-\$KAFKA_PORT/
                   client-sasl-ssl.properties and client-ssl.properties.
            Jars: \$KGATE_CACHE_DIR/kafka-${KAFKA_VERSION}/libs (fetched once with mvn, ~45 MB).
            State: \$KGATE_STATE_DIR/kafka-\$KAFKA_PORT/ (server.properties, log4j2.properties,
                   data/, logs/server.log, kafka.out, kafka.pid).
            Env:   KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (the port the state folder was
                   formatted with, else KAFKA_PORT+1: 9093 for the default),
                   KAFKA_SASL_SSL_PORT, KAFKA_SSL_PORT (the ones the state folder last ran with,
                   else 9094, 9095 for the default KAFKA_PORT and 'off' for any other; 'off'
                   turns a listener off),
                   KAFKA_READY_TIMEOUT seconds (90), KAFKA_HEAP_OPTS ("-Xmx1G -Xms512m"),
                   KAFKA_ADVERTISED_PORT (KAFKA_PORT: where clients are told to reach the
                   PLAINTEXT listener, e.g. a proxy in front of it).
            'up' on a running broker whose settings changed (listeners, certificates) restarts
            it once, keeping its data; a state folder formatted before the SCRAM users existed
            gets them through the admin API at that start.
            A second, independent broker: KAFKA_PORT=9192 KAFKA_CONTROLLER_PORT=9193 $0 up kafka
            (PLAINTEXT only; add KAFKA_SASL_SSL_PORT=9194 KAFKA_SSL_PORT=9195 for the secure
            listeners), and the same env with 'down' stops only that one.
EOF
}

kafka_addr() { printf '%s:%s' "$KAFKA_HOST" "$KAFKA_PORT"; }

# ---------------------------------------------------------------- jars (once, cached)

kafka_fetch_jars_locked() {
  [[ -f "$KAFKA_STAMP" ]] && return 0
  command -v mvn >/dev/null 2>&1 || die "mvn not found on PATH (Debian: apt-get install maven); it fetches the Kafka jars once"
  log "kafka: fetching Kafka ${KAFKA_VERSION} jars from Maven Central (once, ~45 MB) into ${KAFKA_LIBS} ..."
  local t0 work pom
  t0="$(now_s)"
  work="${KAFKA_HOME_CACHE}/fetch"
  pom="${work}/pom.xml"
  rm -rf "$work" "${KAFKA_LIBS}"
  mkdir -p "$work"
  cat >"$pom" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.kgate.local</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_${KAFKA_SCALA}</artifactId>
      <version>${KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>${KAFKA_LOG4J_SLF4J_VERSION}</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF
  if ! mvn -B -q -f "$pom" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="${work}/libs" >"${work}/mvn.log" 2>&1; then
    tail -n 40 "${work}/mvn.log" >&2
    die "kafka: fetching the Kafka jars with mvn failed (full log: ${work}/mvn.log)"
  fi
  local jar
  for jar in "kafka_${KAFKA_SCALA}-${KAFKA_VERSION}.jar" "kafka-clients-${KAFKA_VERSION}.jar" \
    "log4j-slf4j-impl-${KAFKA_LOG4J_SLF4J_VERSION}.jar" "log4j-core-${KAFKA_LOG4J_SLF4J_VERSION}.jar"; do
    [[ -f "${work}/libs/${jar}" ]] || die "kafka: ${jar} missing after mvn (log: ${work}/mvn.log)"
  done
  mv "${work}/libs" "$KAFKA_LIBS"
  date -u +%Y-%m-%dT%H:%M:%SZ >"$KAFKA_STAMP"
  rm -rf "$work"
  log "kafka: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars, $(du -sh "$KAFKA_LIBS" | cut -f1), in $(($(now_s) - t0))s"
}

kafka_ensure_jars() {
  [[ -f "$KAFKA_STAMP" && -d "$KAFKA_LIBS" ]] && return 0
  mkdir -p "$KAFKA_HOME_CACHE"
  with_lock "${KAFKA_HOME_CACHE}/.lock" kafka_fetch_jars_locked
}

# Tools (StorageTool, the probe) log WARN and above to stderr.
kafka_tools_log4j() {
  local f="${KAFKA_HOME_CACHE}/tools-log4j2.properties"
  if [[ ! -f "$f" ]]; then
    cat >"${f}.tmp" <<'EOF'
status = error
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ERROR
rootLogger.appenderRef.stderr.ref = STDERR
EOF
    mv "${f}.tmp" "$f"
  fi
  printf '%s' "$f"
}

# The probe is compiled once per version of its source (keyed by checksum).
kafka_probe_dir() {
  local src="${REPO_ROOT}/scripts/lib/KgateKafkaProbe.java" sum dir
  sum="$(cksum <"$src" | cut -d' ' -f1)"
  dir="${KAFKA_HOME_CACHE}/probe-${sum}"
  if [[ ! -f "${dir}/KgateKafkaProbe.class" ]]; then
    command -v javac >/dev/null 2>&1 || die "javac not found (a JDK is needed, not only a JRE; Debian: openjdk-17-jdk-headless)"
    rm -rf "${dir}.tmp"
    mkdir -p "${dir}.tmp"
    javac -nowarn -d "${dir}.tmp" -cp "${KAFKA_LIBS}/kafka-clients-${KAFKA_VERSION}.jar" "$src" >&2 ||
      die "kafka: compiling the readiness probe failed"
    rm -rf "$dir"
    mv "${dir}.tmp" "$dir"
  fi
  printf '%s' "$dir"
}

# kafka_probe ARGS...: run the probe (see KgateKafkaProbe.java for ARGS).
kafka_probe() {
  local dir cfg
  dir="$(with_lock "${KAFKA_HOME_CACHE}/.lock" kafka_probe_dir)"
  cfg="$(kafka_tools_log4j)"
  java -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
    -Dlog4j2.configurationFile="$cfg" \
    -cp "${dir}:${KAFKA_LIBS}/*" KgateKafkaProbe "$@"
}

# ---------------------------------------------------------------- state

kafka_sasl_on() { [[ "$KAFKA_SASL_SSL_PORT" != off ]]; }
kafka_ssl_on() { [[ "$KAFKA_SSL_PORT" != off ]]; }
kafka_secure_on() { kafka_sasl_on || kafka_ssl_on; }

# kafka_render_config: the broker's server.properties, on stdout. Deterministic: 'up' compares
# it with the one a running broker was started from to know whether to restart it.
kafka_render_config() {
  local listeners="PLAINTEXT://${KAFKA_HOST}:${KAFKA_PORT}"
  # KAFKA_ADVERTISED_PORT: clients are told to reach the PLAINTEXT listener there (a proxy in
  # front of it, e.g. the fault matrix's slow network); KAFKA_PORT by default.
  local advertised="PLAINTEXT://${KAFKA_HOST}:${KAFKA_ADVERTISED_PORT:-$KAFKA_PORT}"
  if kafka_sasl_on; then listeners+=",SASL_SSL://${KAFKA_HOST}:${KAFKA_SASL_SSL_PORT}"; advertised+=",SASL_SSL://${KAFKA_HOST}:${KAFKA_SASL_SSL_PORT}"; fi
  if kafka_ssl_on; then listeners+=",SSL://${KAFKA_HOST}:${KAFKA_SSL_PORT}"; advertised+=",SSL://${KAFKA_HOST}:${KAFKA_SSL_PORT}"; fi
  cat <<EOF
# Generated by scripts/services (kgate) - rewritten on every 'up'; edits are lost.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=${KAFKA_HOST}:${KAFKA_CONTROLLER_PORT}
listeners=${listeners},CONTROLLER://${KAFKA_HOST}:${KAFKA_CONTROLLER_PORT}
advertised.listeners=${advertised},CONTROLLER://${KAFKA_HOST}:${KAFKA_CONTROLLER_PORT}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=${KAFKA_DATA}
num.partitions=1
auto.create.topics.enable=true
delete.topic.enable=true
# Few partitions for the internal topics: a fresh broker creates them at the first consumer
# group / idempotent producer, and 50 of each costs seconds on a 2-core machine.
offsets.topic.num.partitions=1
transaction.state.log.num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
default.replication.factor=1
group.initial.rebalance.delay.ms=0
num.recovery.threads.per.data.dir=1
log.retention.hours=168
log.segment.bytes=1073741824
log.retention.check.interval.ms=300000
EOF
  kafka_secure_on || return 0
  cat <<EOF
# TLS for the secure listeners: the test CA of scripts/lib/tls.sh (PEM key store and trust store).
# CA sha256 $(tls_fingerprint "${TLS_DIR}/ca.pem")
# server certificate sha256 $(tls_fingerprint "${TLS_DIR}/server.pem")
ssl.keystore.type=PEM
ssl.keystore.location=${TLS_DIR}/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=${TLS_DIR}/ca.pem
EOF
  if kafka_sasl_on; then
    cat <<EOF
# SASL_SSL: SCRAM (credentials in the cluster metadata, made at format time) and PLAIN (here).
listener.name.sasl_ssl.ssl.client.auth=none
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_${KAFKA_SASL_USER}="${KAFKA_SASL_PASSWORD}";
EOF
  fi
  if kafka_ssl_on; then
    cat <<EOF
# SSL: mutual TLS, a client certificate signed by the test CA is required.
listener.name.ssl.ssl.client.auth=required
EOF
  fi
}

# The settings of a Java client of each secure listener (the readiness probe uses them; so can
# Kafka's command-line tools, with --command-config).
kafka_write_client_props() {
  if kafka_sasl_on; then
    cat >"${KAFKA_STATE}/client-sasl-ssl.properties" <<EOF
# Generated by scripts/services (kgate): a client of SASL_SSL://${KAFKA_HOST}:${KAFKA_SASL_SSL_PORT}.
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="${KAFKA_SASL_USER}" password="${KAFKA_SASL_PASSWORD}";
ssl.truststore.type=PEM
ssl.truststore.location=${TLS_DIR}/ca.pem
EOF
  fi
  if kafka_ssl_on; then
    cat >"${KAFKA_STATE}/client-ssl.properties" <<EOF
# Generated by scripts/services (kgate): a client of SSL://${KAFKA_HOST}:${KAFKA_SSL_PORT} (mutual TLS).
security.protocol=SSL
ssl.truststore.type=PEM
ssl.truststore.location=${TLS_DIR}/ca.pem
ssl.keystore.type=PEM
ssl.keystore.location=${TLS_DIR}/client-keystore.pem
EOF
  fi
}

# kafka_prepare_config: the test CA (when a secure listener is on), server.properties.next (what
# the broker is to run with), log4j2.properties and the clients' settings; checks that the state
# folder was formatted for these ports.
kafka_prepare_config() {
  mkdir -p "$KAFKA_STATE" "$KAFKA_DATA" "$KAFKA_LOGDIR"
  if kafka_secure_on; then tls_ensure; fi
  kafka_render_config >"${KAFKA_STATE}/server.properties.next"
  kafka_write_client_props

  cat >"${KAFKA_STATE}/log4j2.properties" <<'EOF'
# Generated by scripts/services (kgate). Broker logs go to logs/server.log, not the terminal.
status = error
appender.server.type = RollingFile
appender.server.name = SERVER
appender.server.fileName = ${sys:kafka.logs.dir}/server.log
appender.server.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 50MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = SERVER
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.network.name = kafka.network.RequestChannel$
logger.network.level = WARN
EOF
  # The controller port is baked into the formatted metadata (standalone voter set), so a
  # state folder is tied to the port pair it was formatted with.
  if [[ -f "${KAFKA_STATE}/ports" ]]; then
    local had
    had="$(cat "${KAFKA_STATE}/ports")"
    if [[ "$had" != "${KAFKA_PORT} ${KAFKA_CONTROLLER_PORT}" ]]; then
      die "kafka: $(rel "$KAFKA_STATE") was formatted for ports '${had}' (broker controller), now asked for '${KAFKA_PORT} ${KAFKA_CONTROLLER_PORT}'; use the old KAFKA_CONTROLLER_PORT or run: KAFKA_PORT=${KAFKA_PORT} $0 reset kafka"
    fi
  fi
}

# kafka_config_change OLD NEW: what differs between two server.properties, in a few words.
kafka_config_change() {
  local old new
  old="$(sed -n 's/^listeners=//p' "$1" 2>/dev/null)"
  new="$(sed -n 's/^listeners=//p' "$2")"
  if [[ "$old" != "$new" ]]; then
    printf 'listeners were %s, now %s' "${old:-unknown}" "$new"
  elif ! cmp -s <(grep '^# .*sha256' "$1" 2>/dev/null) <(grep '^# .*sha256' "$2"); then
    printf 'new TLS certificates'
  else
    printf 'server.properties changed'
  fi
}

kafka_format_if_needed() {
  [[ -f "${KAFKA_DATA}/meta.properties" ]] && return 0
  local cfg cluster_id
  cfg="$(kafka_tools_log4j)"
  # A data dir without meta.properties is an interrupted format: start clean.
  rm -rf "$KAFKA_DATA"
  mkdir -p "$KAFKA_DATA"
  # What `StorageTool random-uuid` prints (16 random bytes, URL-safe base64 without padding,
  # not starting with '-'), without paying for a JVM start.
  cluster_id="-"
  while [[ "$cluster_id" == -* ]]; do
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | cut -c1-22)"
  done
  [[ "$cluster_id" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "kafka: could not make a cluster id (got '${cluster_id}')"
  log "kafka: formatting KRaft storage in $(rel "$KAFKA_DATA") (cluster id ${cluster_id}, SCRAM user ${KAFKA_SASL_USER})"
  # The SASL user's SCRAM credentials go into the metadata at format time (both mechanisms).
  if ! java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dlog4j2.configurationFile="$cfg" \
    -cp "${KAFKA_LIBS}/*" kafka.tools.StorageTool format \
    -t "$cluster_id" -c "${KAFKA_STATE}/server.properties" --standalone \
    --add-scram "SCRAM-SHA-256=[name=${KAFKA_SASL_USER},password=${KAFKA_SASL_PASSWORD}]" \
    --add-scram "SCRAM-SHA-512=[name=${KAFKA_SASL_USER},password=${KAFKA_SASL_PASSWORD}]" \
    >>"${KAFKA_LOGDIR}/format.log" 2>&1; then
    tail -n 30 "${KAFKA_LOGDIR}/format.log" >&2 || true
    rm -rf "$KAFKA_DATA"
    die "kafka: formatting the storage failed (log: ${KAFKA_LOGDIR}/format.log)"
  fi
  printf '%s\n' "$cluster_id" >"${KAFKA_STATE}/cluster.id"
  printf '%s %s\n' "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" >"${KAFKA_STATE}/ports"
  kafka_mark_scram_users
}

# The SCRAM users a state folder has: written at format time, or once the admin API added them
# to a folder formatted before they existed (see kafka_up_locked).
kafka_mark_scram_users() {
  printf '%s SCRAM-SHA-256 SCRAM-SHA-512\n' "$KAFKA_SASL_USER" >"${KAFKA_STATE}/scram-users"
}

# The pid in the pid file, if it is a live Kafka started from this state folder.
kafka_running_pid() {
  local pid cmd
  pid="$(read_pidfile "$KAFKA_PIDFILE")"
  [[ -n "$pid" ]] || return 0
  pid_alive "$pid" || return 0
  cmd="$(pid_cmdline "$pid")"
  case "$cmd" in
  *kafka.Kafka*"${KAFKA_STATE}/server.properties"*) printf '%s' "$pid" ;;
  *) ;;
  esac
}

kafka_tail_logs() {
  local n="${1:-30}"
  if [[ -s "${KAFKA_LOGDIR}/server.log" ]]; then
    # Without the tab-indented config dumps, which would fill the tail.
    log "----- last ${n} lines of ${KAFKA_LOGDIR}/server.log (config dumps left out)"
    grep -v $'^\t' "${KAFKA_LOGDIR}/server.log" | tail -n "$n" >&2 || true
  fi
  if [[ -s "${KAFKA_STATE}/kafka.out" ]]; then
    log "----- last ${n} lines of ${KAFKA_STATE}/kafka.out (JVM stdout/stderr)"
    tail -n "$n" "${KAFKA_STATE}/kafka.out" >&2 || true
  fi
  log "-----"
}

# ---------------------------------------------------------------- commands

# up and down hold a lock per state folder, so that concurrent calls (parallel tests) queue.
kafka_up() { with_lock "${KAFKA_STATE}.lock" kafka_up_locked; }
kafka_down() { with_lock "${KAFKA_STATE}.lock" kafka_down_locked "$@"; }

kafka_up_locked() {
  local pid port t0 conf="${KAFKA_STATE}/server.properties"
  t0="$(now_s)"
  pid="$(kafka_running_pid)"
  if [[ -n "$pid" ]]; then
    kafka_prepare_config
    if cmp -s "${conf}.next" "$conf"; then
      rm -f "${conf}.next"
      log "kafka already running on $(kafka_addr) (pid ${pid})"
      return 0
    fi
    # Started by an older scripts/services, or the certificates were made again: restart once.
    log "kafka: the broker running on $(kafka_addr) (pid ${pid}) was started with other settings ($(kafka_config_change "$conf" "${conf}.next")); restarting it to apply them (data kept)"
    stop_pid "$pid" kafka 30 || die "kafka: could not stop pid ${pid}"
  fi
  rm -f "$KAFKA_PIDFILE"
  local ports=("$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT")
  if kafka_sasl_on; then ports+=("$KAFKA_SASL_SSL_PORT"); fi
  if kafka_ssl_on; then ports+=("$KAFKA_SSL_PORT"); fi
  for port in "${ports[@]}"; do
    if port_in_use "$port"; then
      die "kafka: ${KAFKA_HOST}:${port} is already in use by another process, not one started from $(rel "$KAFKA_STATE") ($(port_owner "$port")). Stop it, or choose other ports with KAFKA_PORT / KAFKA_CONTROLLER_PORT / KAFKA_SASL_SSL_PORT / KAFKA_SSL_PORT."
    fi
  done
  require_java17
  kafka_ensure_jars
  kafka_prepare_config
  mv "${conf}.next" "$conf"
  printf '%s %s\n' "$KAFKA_SASL_SSL_PORT" "$KAFKA_SSL_PORT" >"${KAFKA_STATE}/secure-ports"
  kafka_format_if_needed
  # A state folder formatted before the secure listeners has no SCRAM users: the probe adds
  # them through the admin API once the broker answers (no re-format, the data stays).
  local probe_args=() add_scram=0
  if kafka_sasl_on && [[ ! -f "${KAFKA_STATE}/scram-users" ]]; then
    add_scram=1
    log "kafka: $(rel "$KAFKA_STATE") was formatted without SCRAM users (before the secure listeners); adding ${KAFKA_SASL_USER} for SCRAM-SHA-256 and SCRAM-SHA-512 through the admin API once the broker answers (data kept, no re-format)"
    probe_args+=(--add-scram "${KAFKA_SASL_USER}=${KAFKA_SASL_PASSWORD}")
  fi
  if kafka_sasl_on; then
    probe_args+=(--also SASL_SSL "${KAFKA_HOST}:${KAFKA_SASL_SSL_PORT}" "${KAFKA_STATE}/client-sasl-ssl.properties")
  fi
  if kafka_ssl_on; then
    probe_args+=(--also SSL "${KAFKA_HOST}:${KAFKA_SSL_PORT}" "${KAFKA_STATE}/client-ssl.properties")
  fi

  log "kafka: starting on $(kafka_addr) (controller ${KAFKA_HOST}:${KAFKA_CONTROLLER_PORT}$(kafka_secure_brief)), logs in $(rel "$KAFKA_LOGDIR")"
  # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS is a list of JVM flags
  (
    cd "$KAFKA_STATE" || exit 1
    exec setsid java -server $KAFKA_HEAP_OPTS \
      -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
      -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true \
      -Dkafka.logs.dir="$KAFKA_LOGDIR" \
      -Dlog4j2.configurationFile="${KAFKA_STATE}/log4j2.properties" \
      -cp "${KAFKA_LIBS}/*" kafka.Kafka "${KAFKA_STATE}/server.properties"
  ) >>"${KAFKA_STATE}/kafka.out" 2>&1 </dev/null 9>&- & # 9>&-: the broker must not inherit the lock
  pid=$!
  printf '%s\n' "$pid" >"$KAFKA_PIDFILE"

  printf 'kafka: waiting for the broker to answer metadata requests (up to %ss) ' "$KAFKA_READY_TIMEOUT" >&2
  local out rc=0 deadline left
  deadline=$(($(now_s) + KAFKA_READY_TIMEOUT))
  # Cheap wait for the listener first, so that the probe's JVM does not compete with the
  # broker's start-up for the CPU; then a real metadata request.
  while ! port_in_use "$KAFKA_PORT"; do
    if ! pid_alive "$pid"; then
      rc=3
      break
    fi
    if (($(now_s) >= deadline)); then
      rc=1
      break
    fi
    printf '.' >&2
    sleep 1
  done
  if ((rc == 0)); then
    left=$((deadline - $(now_s)))
    ((left >= 5)) || left=5
    out="$(kafka_probe "$(kafka_addr)" --wait-ms "$((left * 1000))" --pid "$pid" \
      --cluster-id "$(cat "${KAFKA_STATE}/cluster.id")" "${probe_args[@]+"${probe_args[@]}"}")" || rc=$?
  fi
  printf '\n' >&2
  if ((rc != 0)); then
    case "$rc" in
    3) log "kafka: the broker process (pid ${pid}) exited during start-up" ;;
    4) log "kafka: another broker answers on $(kafka_addr)" ;;
    5) log "kafka: could not add the SCRAM user ${KAFKA_SASL_USER} (see above)" ;;
    *) log "kafka: the broker did not become ready within ${KAFKA_READY_TIMEOUT}s" ;;
    esac
    kafka_tail_logs 30
    if pid_alive "$pid"; then
      stop_pid "$pid" kafka 10 || true
    fi
    rm -f "$KAFKA_PIDFILE"
    die "kafka did not start (state: ${KAFKA_STATE})"
  fi
  if ((add_scram)); then
    kafka_mark_scram_users
  fi
  log "kafka ready on $(kafka_addr) (pid ${pid}) in $(($(now_s) - t0))s: ${out}"
}

# ", SASL_SSL on :9094, SSL (client certificates) on :9095", or nothing with both off.
kafka_secure_brief() {
  if kafka_sasl_on; then printf ', SASL_SSL on :%s' "$KAFKA_SASL_SSL_PORT"; fi
  if kafka_ssl_on; then printf ', SSL (client certificates) on :%s' "$KAFKA_SSL_PORT"; fi
}

# kafka_secure_status FILE: the secure listeners a server.properties opens, and the CA (empty
# when it opens none).
kafka_secure_status() {
  local listeners sasl ssl out=""
  listeners="$(sed -n 's/^listeners=//p' "$1" 2>/dev/null | tr ',' '\n')"
  sasl="$(sed -n 's|^SASL_SSL://||p' <<<"$listeners")"
  ssl="$(sed -n 's|^SSL://||p' <<<"$listeners")"
  if [[ -n "$sasl" ]]; then
    out="SASL_SSL ${sasl} (SCRAM-SHA-256, SCRAM-SHA-512, PLAIN; user ${KAFKA_SASL_USER})"
  fi
  if [[ -n "$ssl" ]]; then
    out+="${out:+, }SSL ${ssl} (client certificate required)"
  fi
  if [[ -n "$out" ]]; then
    printf '%s; CA %s' "$out" "$(rel "${TLS_DIR}/ca.pem")"
  fi
}

kafka_down_locked() {
  local wipe="${1:-}" pid stale
  pid="$(kafka_running_pid)"
  if [[ -z "$pid" ]]; then
    stale="$(read_pidfile "$KAFKA_PIDFILE")"
    rm -f "$KAFKA_PIDFILE"
    if [[ -n "$stale" ]]; then
      log "kafka on $(kafka_addr): not running (removed stale pid file, pid ${stale})"
    else
      log "kafka on $(kafka_addr): not running"
    fi
  else
    log "kafka: stopping pid ${pid} on $(kafka_addr) ..."
    local t0
    t0="$(now_s)"
    stop_pid "$pid" kafka 30 || die "kafka: could not stop pid ${pid}"
    rm -f "$KAFKA_PIDFILE"
    log "kafka: stopped in $(($(now_s) - t0))s"
  fi
  if [[ "$wipe" == "--wipe" && -d "$KAFKA_STATE" ]]; then
    rm -rf "$KAFKA_STATE"
    log "kafka: removed $(rel "$KAFKA_STATE") (data, config, logs)"
  fi
}

kafka_status() {
  local pid line
  pid="$(kafka_running_pid)"
  if [[ -n "$pid" ]]; then
    line="$(printf '%-9s running  pid %-7s %s (controller %s:%s)  state %s' \
      kafka "$pid" "$(kafka_addr)" "$KAFKA_HOST" "$KAFKA_CONTROLLER_PORT" "$(rel "$KAFKA_STATE")")"
    local secure
    secure="$(kafka_secure_status "${KAFKA_STATE}/server.properties")"
    if [[ -n "$secure" ]]; then
      line+="$(printf '\n%-9s secure   %s' "" "$secure")"
    fi
  else
    line="$(printf '%-9s stopped  %-11s %s' kafka "" "$(kafka_addr)")"
    if port_in_use "$KAFKA_PORT"; then
      line+="  (port in use by another process: $(port_owner "$KAFKA_PORT"))"
    fi
  fi
  printf '%s\n' "$line"
  # Other instances (other KAFKA_PORT) started from the same state root.
  local d other opid
  for d in "${KGATE_STATE_DIR}"/kafka-*/; do
    [[ -d "$d" ]] || continue
    d="${d%/}"
    [[ "$d" == "$KAFKA_STATE" ]] && continue
    other="${d##*/kafka-}"
    opid="$(
      KAFKA_STATE="$d"
      KAFKA_PIDFILE="$d/kafka.pid"
      kafka_running_pid
    )"
    if [[ -n "$opid" ]]; then
      printf '%-9s running  pid %-7s %s:%s (another instance; KAFKA_PORT=%s to address it)\n' \
        kafka "$opid" "$KAFKA_HOST" "$other" "$other"
    fi
  done
}

kafka_logs() {
  local f="${KAFKA_LOGDIR}/server.log"
  [[ -f "$f" ]] || die "kafka: no log yet at ${f}"
  printf '==> %s <==\n' "$f"
  tail -n "${KGATE_LOG_LINES:-50}" "$f"
}

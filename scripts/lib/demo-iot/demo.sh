# shellcheck shell=bash
# shellcheck disable=SC2154 # root, seconds and step come from scripts/demo
# `scripts/demo iot`: the IoT validator demo. Sourced by scripts/demo (which sets root, seconds,
# step and runs the system packages step first); runs to the end and exits.
#
# kafka only; kgate (release) with scripts/lib/demo-iot/kgate.yaml: a synthetic iot feed with
# one invalid message in DEMO_INVALID_EVERY → telemetry.raw → validator (JSON Schema) →
# telemetry.clean / telemetry.dlq; progress every 5 s; at the end `kgate dlq inspect`.

demo_iot() {
  local rate="${DEMO_RATE:-50}" every="${DEMO_INVALID_EVERY:-20}" port="${DEMO_IOT_PORT:-4210}"
  local here="$root/scripts/lib/demo-iot" logs="$root/.state/demo" kgate validate
  export KGATE_METRICS="${KGATE_METRICS:-127.0.0.1:9000}"
  export IOT_FEED_URL="ws://127.0.0.1:$port/ws"
  export DEMO_IOT_SCHEMA="${DEMO_IOT_SCHEMA:-$root/examples/schemas/telemetry.schema.json}"
  mkdir -p "$logs"

  step "1/5 Kafka"
  if [ -n "${KAFKA_BROKERS:-}" ]; then
    echo "using Kafka at $KAFKA_BROKERS (KAFKA_BROKERS; not starting one)"
  else
    scripts/services up kafka
  fi

  step "2/5 building kgate (release; the first build takes a few minutes)"
  if [ -n "${DEMO_KGATE:-}" ]; then
    kgate="$DEMO_KGATE"
    echo "using $kgate (DEMO_KGATE)"
  else
    cargo build --release --quiet
    kgate="${CARGO_TARGET_DIR:-$root/target}/release/kgate"
  fi

  # The validate: step: on when this kgate knows `validate:` (DEMO_VALIDATE=auto, the default).
  validate="${DEMO_VALIDATE:-auto}"
  if [ "$validate" = auto ]; then
    if "$kgate" config schema 2>/dev/null | grep -q '"validate"'; then validate=1; else validate=0; fi
  fi
  if [ "$validate" = 1 ]; then
    [ -f "$DEMO_IOT_SCHEMA" ] || { echo "the JSON Schema $DEMO_IOT_SCHEMA does not exist (set DEMO_IOT_SCHEMA, or DEMO_VALIDATE=0)" >&2; exit 1; }
    cp "$here/kgate.yaml" "$logs/iot.yaml"
  else
    echo "note: validate: is off (DEMO_VALIDATE=${DEMO_VALIDATE:-auto}: this kgate has no validate: step, or it was turned off);"
    echo "      only malformed JSON and records without device_id are rejected"
    grep -v '#@validate$' "$here/kgate.yaml" >"$logs/iot.yaml"
  fi

  pids=()
  cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  }
  trap cleanup EXIT

  step "3/5 a synthetic iot feed at $rate msg/s on ws://127.0.0.1:$port/ws, every ${every}th message invalid"
  echo "(rotating: malformed JSON, no device_id, heart_rate 300)"
  # setsid: Ctrl-C reaches this script only, which then stops the feed, lets the validator settle,
  # shows the DLQ and stops kgate, in that order.
  setsid "$kgate" synth --listen "127.0.0.1:$port" --feed iot --rate "$rate" --invalid-every "$every" \
    --id demo-iot >"$logs/synth-iot.log" 2>&1 &
  synth=$!
  pids+=("$synth")
  sleep 0.5

  step "4/5 kgate check, then kgate run: feed → telemetry.raw; telemetry.raw → validator → telemetry.clean | telemetry.dlq"
  sed -n '/^pipelines:/,$p' "$logs/iot.yaml"
  "$kgate" check --config "$logs/iot.yaml" || true
  local t_run since
  t_run=$(date +%s)
  setsid "$kgate" run --config "$logs/iot.yaml" >"$logs/kgate-iot.log" 2>&1 &
  gw=$!
  pids+=("$gw")

  step "5/5 progress every 5 s (counts of this run, from http://$KGATE_METRICS/metrics)"
  if [ "$seconds" -gt 0 ]; then
    echo "running for ${seconds}s..."
  else
    echo "running; Ctrl-C stops the feed, shows the rejected records and stops kgate cleanly."
  fi
  stop=0
  trap 'stop=1' INT TERM
  local start
  start=$(date +%s)
  while [ "$stop" = 0 ]; do
    sleep 5 & wait $! || true
    [ "$stop" = 1 ] && break
    if ! kill -0 "$gw" 2>/dev/null; then
      echo "kgate exited; its log ($logs/kgate-iot.log):" >&2
      tail -n 20 "$logs/kgate-iot.log" >&2
      exit 1
    fi
    echo "$(date +%T)  $(iot_counts)"
    if [ "$seconds" -gt 0 ] && [ $(($(date +%s) - start)) -ge "$seconds" ]; then break; fi
  done
  trap - INT TERM

  echo; echo "stopping the feed; waiting for the validator to settle what telemetry.raw holds..."
  kill -TERM "$synth" 2>/dev/null || true
  wait "$synth" 2>/dev/null || true
  for _ in $(seq 1 40); do
    iot_settled && break
    sleep 0.5
  done
  echo "$(date +%T)  $(iot_counts)"
  # Only this run's DLQ records: written since kgate started (the topic keeps earlier runs').
  since=$(($(date +%s) - t_run + 1))

  echo; echo "the rejected records of this run (kgate dlq inspect --topic telemetry.dlq --max 5 --since ${since}s):"
  "$kgate" dlq inspect --brokers "${KAFKA_BROKERS:-127.0.0.1:9092}" --topic telemetry.dlq --max 5 --since "${since}s" || true

  echo; echo "stopping kgate (SIGTERM: stop reading, settle, commit, flush)..."
  kill -TERM "$gw" 2>/dev/null || true
  local rc=0
  wait "$gw" || rc=$?
  grep -E "shutdown complete" "$logs/kgate-iot.log" | sed 's/^.*shutdown complete/shutdown complete/' || true
  echo "logs: $logs/kgate-iot.log, $logs/synth-iot.log; config: $logs/iot.yaml"
  echo "read the topics: $kgate tail --topic telemetry.clean   (or telemetry.raw, telemetry.dlq)"
  echo "Kafka is still running (scripts/services status); stop it with: scripts/services down"
  exit "$rc"
}

# "raw N  clean N  dlq N (type N, ...)" from kgate's metrics: what this kgate wrote to each topic.
iot_counts() {
  curl -s "http://$KGATE_METRICS/metrics" | awk '
    /^kafka_messages_published_total\{.*topic="telemetry.raw"/ { raw += $NF }
    /^kafka_messages_published_total\{.*topic="telemetry.clean"/ { clean += $NF }
    /^kafka_dlq_published_total\{.*dlq_topic="telemetry.dlq"/ {
      dlq += $NF
      if (match($0, /error_type="[^"]*"/)) { t = substr($0, RSTART + 12, RLENGTH - 13); by[t] += $NF }
    }
    END {
      s = ""
      for (t in by) s = s (s == "" ? "" : ", ") t " " by[t]
      printf "raw %d  clean %d  dlq %d%s", raw, clean, dlq, (s == "" ? "" : " (" s ")")
    }'
}

# True once every record written to telemetry.raw in this run is in telemetry.clean or telemetry.dlq.
iot_settled() {
  local c
  c="$(iot_counts)"
  # shellcheck disable=SC2086 # split into words on purpose
  set -- $c
  # raw N clean N dlq N ...
  [ "$2" -gt 0 ] && [ $(($4 + $6)) -ge "$2" ]
}

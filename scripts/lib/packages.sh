# System packages kgate's build and local services need (Debian/Ubuntu). Sourced by .ci/run and
# scripts/demo: `system_packages` installs what is missing (apt, as root) and checks Java and Maven.
# shellcheck shell=bash

as_root() {
  if [[ "$(id -u)" == "0" ]]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    echo "not root and no sudo: cannot run $*" >&2
    return 1
  fi
}

java_major() {
  command -v java >/dev/null 2>&1 || return 0
  java -version 2>&1 | sed -n -E 's/.*version "([0-9]+).*/\1/p' | sed -n 1p
}

# ------------------------------------------------------------------ system packages
system_packages() {
  # What the Rust build needs: rdkafka 0.39 builds its bundled librdkafka with configure + make
  # (features ssl + zstd; openssl-sys links the system OpenSSL via pkg-config). libsasl2, libcurl
  # and libzstd headers are not used by today's feature set but are kept for the SASL/GSSAPI and
  # cmake variants; python3 lets librdkafka's configure generate its linker script.
  local pkgs=(build-essential make pkg-config perl python3 ca-certificates
    libssl-dev zlib1g-dev libzstd-dev libsasl2-dev libcurl4-openssl-dev)
  # The local Kafka needs Java 17+ with javac (its readiness probe is compiled once) and Maven.
  local major
  major="$(java_major)"
  if [[ -z "$major" || "$major" -lt 17 ]] || ! command -v javac >/dev/null 2>&1; then
    pkgs+=(openjdk-17-jdk-headless)
  fi
  command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
  # The local schema registry (Apicurio) is downloaded with curl; the local MQTT broker is
  # Debian's Mosquitto (mosquitto_sub/pub for poking at it by hand).
  pkgs+=(curl mosquitto mosquitto-clients)
  # The test CA of the local services (Kafka's SASL_SSL and SSL listeners) is made with openssl.
  pkgs+=(openssl)
  # The Avro tests decode with Python fastavro, installed by scripts/test into a venv.
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || pkgs+=(python3-venv)

  local missing=() p
  for p in "${pkgs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]} == 0)); then
    echo "all present: ${pkgs[*]}"
  else
    echo "installing: ${missing[*]}"
    # (step runs this without errexit: every command that must succeed says so.)
    as_root apt-get update -q || return 1
    as_root apt-get install -y -q --no-install-recommends "${missing[@]}" || return 1
    # On a machine run by systemd, installing mosquitto starts the system broker on 1883, the
    # port of scripts/services' own: stop and disable it (we run ours with our config).
    if [[ " ${missing[*]} " == *" mosquitto "* ]] && command -v systemctl >/dev/null 2>&1 &&
      systemctl is-active --quiet mosquitto 2>/dev/null; then
      echo "disabling the system mosquitto service (scripts/services runs its own on 1883)"
      as_root systemctl disable --now mosquitto || true
    fi
  fi

  # An older Java first on PATH: prefer Debian's 17.
  major="$(java_major)"
  if [[ -z "$major" || "$major" -lt 17 ]]; then
    local jdk
    for jdk in /usr/lib/jvm/java-17-openjdk-*/bin; do
      [[ -x "${jdk}/java" ]] && export PATH="${jdk}:${PATH}" && break
    done
    major="$(java_major)"
  fi
  [[ -n "$major" && "$major" -ge 17 ]] || {
    echo "Java 17 or later is needed, found: $(java -version 2>&1 | sed -n 1p)" >&2
    return 1
  }
  command -v javac >/dev/null 2>&1 || {
    echo "javac not found (a JDK is needed)" >&2
    return 1
  }
  command -v mvn >/dev/null 2>&1 || {
    echo "mvn not found after install" >&2
    return 1
  }
  java -version 2>&1 | sed -n 1p
  mvn -B -v 2>/dev/null | sed -n -e 's/\x1b\[[0-9;]*m//g' -e 1p
  return 0
}


#!/usr/bin/env bash
# Installs the real servers walrelay's tests and benchmarks start on loopback
# ports (src/walrelay/testing/servers.py): Redis, NATS (JetStream), RabbitMQ
# from Debian's packages, and Apache Kafka 4.x (KRaft) as jars from Maven Central;
# Prometheus and Alertmanager (Debian's prometheus, prometheus-alertmanager) for
# the alerting tests (promtool checks deploy/prometheus/walrelay-rules.yml), and
# the community postgres_exporter (prometheus-postgres-exporter) that runs
# deploy/prometheus/postgres_exporter-queries.yml in the tests.
#
#   bash scripts/servers/install.sh [all|redis|nats|rabbitmq|kafka|prometheus ...]
#   bash scripts/servers/install.sh perftools   # not in "all": bench/broker_tools.py only
#
# perftools: the brokers' own load generators, for bench/broker_tools.py --
# Kafka's ProducerPerformance and RabbitMQ's PerfTest (jars from Maven Central
# into $WALRELAY_CACHE/perftools/libs), the NATS CLI (`nats bench`, built with
# `go install` into $WALRELAY_CACHE/perftools/bin); redis-benchmark comes with
# the redis package.
#
# Idempotent and quiet: it only checks files when everything is in place.
# The Debian packages' own system services are never started (a policy-rc.d
# answering 101 is in force during the install) and are disabled afterwards
# where systemd runs: walrelay starts its own instances on free ports.
#
# Environment:
#   WALRELAY_CACHE          cache root (default ~/.cache/walrelay); the Kafka
#                           jars go to $WALRELAY_CACHE/kafka-$KAFKA_VERSION/libs
#   WALRELAY_KAFKA_VERSION  Kafka version (default 4.4.0)
#   WALRELAY_LOG4J_VERSION  log4j2 version for the broker's logging backend
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KAFKA_VERSION="${WALRELAY_KAFKA_VERSION:-4.4.0}"
LOG4J_VERSION="${WALRELAY_LOG4J_VERSION:-2.25.5}"
SLF4J_VERSION="${WALRELAY_SLF4J_VERSION:-2.0.17}"
CACHE="${WALRELAY_CACHE:-${HOME}/.cache/walrelay}"
KAFKA_LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
PERFTOOLS="$CACHE/perftools"
PERFTEST_VERSION="${WALRELAY_PERFTEST_VERSION:-2.22.1}"
NATSCLI_VERSION="${WALRELAY_NATSCLI_VERSION:-v0.5.0}"
RABBITMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server

say() { echo "servers/install: $*" >&2; }

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(all)
wants() {
  local w
  for w in "${want[@]}"; do
    [ "$w" = all ] || [ "$w" = "$1" ] && return 0
  done
  return 1
}
for w in "${want[@]}"; do
  case "$w" in
    all | redis | nats | rabbitmq | kafka | prometheus | perftools) ;;
    *) say "unknown server '$w' (all, redis, nats, rabbitmq, kafka, prometheus, perftools)"; exit 2 ;;
  esac
done

# --- Debian packages -------------------------------------------------------
pkgs=()
services=()
if wants redis && ! command -v redis-server >/dev/null 2>&1; then
  pkgs+=(redis-server); services+=(redis-server)
fi
if wants nats && ! command -v nats-server >/dev/null 2>&1; then
  pkgs+=(nats-server); services+=(nats-server)
fi
if wants rabbitmq && { [ ! -x "$RABBITMQ_SERVER" ] || ! command -v epmd >/dev/null 2>&1; }; then
  pkgs+=(rabbitmq-server); services+=(rabbitmq-server epmd.socket epmd)
fi
if wants prometheus; then
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
    || { pkgs+=(prometheus); services+=(prometheus); }
  command -v prometheus-alertmanager >/dev/null 2>&1 \
    || { pkgs+=(prometheus-alertmanager); services+=(prometheus-alertmanager); }
  command -v prometheus-postgres-exporter >/dev/null 2>&1 \
    || { pkgs+=(prometheus-postgres-exporter); services+=(prometheus-postgres-exporter); }
fi
wants_perftools() {
  local w
  for w in "${want[@]}"; do [ "$w" = perftools ] && return 0; done
  return 1
}
if wants_perftools; then
  command -v java >/dev/null 2>&1 || pkgs+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || pkgs+=(maven)
  command -v redis-benchmark >/dev/null 2>&1 || pkgs+=(redis-tools)
fi
if wants kafka; then
  command -v java >/dev/null 2>&1 || pkgs+=(openjdk-17-jre-headless)
  if [ ! -f "$KAFKA_LIBS/.complete" ] && ! command -v mvn >/dev/null 2>&1; then
    pkgs+=(maven)
  fi
fi

if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages; as root run: apt-get install ${pkgs[*]}"
    exit 1
  fi
  say "installing ${pkgs[*]}"
  # Keep the packages' postinst from starting system-wide instances.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# walrelay servers/install.sh: no service starts during install\nexit 101\n' \
      >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  cleanup_policy() { [ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d; return 0; }
  trap cleanup_policy EXIT
  log="$(mktemp)"
  apt=(apt-get -qq -o DPkg::Lock::Timeout=300)
  if ! { "${apt[@]}" update && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y \
    --no-install-recommends "${pkgs[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    say "apt-get install ${pkgs[*]} failed"
    exit 1
  fi
  rm -f "$log"
  cleanup_policy
  trap - EXIT
  # Under systemd: make sure the system-wide services neither run nor start at boot.
  if [ ${#services[@]} -gt 0 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now "${services[@]}" >/dev/null 2>&1 || true
  fi
fi

# --- Jars from Maven Central ---------------------------------------------------
# fetch_jars DEST POM MARK REQUIRED_JAR WHAT -Dprop=value...: the POM's runtime
# dependencies into DEST (replaced whole), which then holds MARK in .complete.
fetch_jars() {
  local dest="$1" pom="$2" mark="$3" required="$4" what="$5"
  shift 5
  local tmp="$dest.tmp.$$" log
  say "fetching $what jars into $dest"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  log="$(mktemp)"
  if ! mvn -B -q -f "$pom" dependency:copy-dependencies "$@" -DincludeScope=runtime \
    -DoutputDirectory="$tmp" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    rm -rf "$tmp"
    say "Maven could not fetch $what"
    exit 1
  fi
  rm -f "$log"
  if [ ! -f "$tmp/$required" ]; then
    rm -rf "$tmp"
    say "$required missing after the Maven download"
    exit 1
  fi
  echo "$mark" >"$tmp/.complete"
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

if wants kafka && [ ! -f "$KAFKA_LIBS/.complete" ]; then
  fetch_jars "$KAFKA_LIBS" "$HERE/kafka/pom.xml" \
    "kafka=$KAFKA_VERSION log4j=$LOG4J_VERSION slf4j=$SLF4J_VERSION" \
    "kafka_2.13-$KAFKA_VERSION.jar" "Kafka $KAFKA_VERSION (org.apache.kafka:kafka_2.13)" \
    -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$LOG4J_VERSION" \
    -Dslf4j.version="$SLF4J_VERSION"
fi

# --- perftools (only when named) ----------------------------------------------
perftools_mark="kafka=$KAFKA_VERSION perftest=$PERFTEST_VERSION slf4j=$SLF4J_VERSION"
if wants_perftools && [ "$(cat "$PERFTOOLS/libs/.complete" 2>/dev/null)" != "$perftools_mark" ]; then
  fetch_jars "$PERFTOOLS/libs" "$HERE/perftools/pom.xml" "$perftools_mark" \
    "perf-test-$PERFTEST_VERSION.jar" "kafka-tools $KAFKA_VERSION and PerfTest $PERFTEST_VERSION" \
    -Dkafka.version="$KAFKA_VERSION" -Dperftest.version="$PERFTEST_VERSION" \
    -Dslf4j.version="$SLF4J_VERSION"
fi
if wants_perftools && [ "$("$PERFTOOLS/bin/nats" --version 2>/dev/null)" != "$NATSCLI_VERSION" ]; then
  if ! command -v go >/dev/null 2>&1; then
    say "the NATS CLI is built with Go, which is missing: install Go (https://go.dev/dl/)"
    exit 1
  fi
  say "building the NATS CLI $NATSCLI_VERSION into $PERFTOOLS/bin (go install)"
  mkdir -p "$PERFTOOLS/bin"
  log="$(mktemp)"
  if ! GOBIN="$PERFTOOLS/bin" go install "github.com/nats-io/natscli/nats@$NATSCLI_VERSION" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    say "go install github.com/nats-io/natscli/nats@$NATSCLI_VERSION failed"
    exit 1
  fi
  rm -f "$log"
fi
exit 0

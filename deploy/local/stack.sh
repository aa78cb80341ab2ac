#!/usr/bin/env bash
# The real local stack posflow runs and tests against: Apache Kafka (KRaft), Apicurio Registry
# (Confluent-compatible API), Mosquitto, PostgreSQL and an SMTP server — every one a real
# component, all on loopback.
#
#   stack.sh install   fetch and unpack what is missing (idempotent; cached under $POSFLOW_CACHE)
#   stack.sh up        install, then start whatever is not running, and wait until each is ready
#   stack.sh down      stop every process `up` started
#   stack.sh status    what runs where
#   stack.sh stop NAME / start NAME   one component (kafka, registry, mosquitto, postgres, smtp;
#                      kafka-2, kafka-3 … in a cluster), for fault-injection tests
#   stack.sh kill NAME   SIGKILL a component (a crash, not a shutdown); `start` brings it back
#   stack.sh pause NAME / resume NAME   freeze (SIGSTOP) and thaw (SIGCONT) a component: it keeps
#                      its connections but answers nothing
#   stack.sh env       the addresses, as POSFLOW_* variables, for `eval`
#   stack.sh replication   the provisioning flags this Kafka can honour (posflow-admin provision)
#
# Kafka runs as one KRaft node by default. POSFLOW_KAFKA_NODES=3 (at the first `up`, on an empty
# stack) makes it a cluster of three, each node controller and broker with its own ports, data
# directory and log: `kafka` (node 1), `kafka-2`, `kafka-3`. The node count is kept with the data;
# changing it means `down` and removing .stack/kafka*.
#
# Runtime state (data, logs, pid files) lives in $POSFLOW_STACK (default: <repo>/.stack).
# Downloads are cached in $POSFLOW_CACHE (default: ~/.cache/posflow) and Maven's ~/.m2, so a
# second `up` downloads nothing. See docs/local-stack.md for the decisions behind each setting.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
STACK=${POSFLOW_STACK:-$repo/.stack}
CACHE=${POSFLOW_CACHE:-$HOME/.cache/posflow}

KAFKA_VERSION=4.4.0
APICURIO_VERSION=3.3.3
DEP_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

# Ports: project-specific so a developer's own Kafka or PostgreSQL on the defaults is left alone.
# Kafka node n listens on KAFKA_PORT + 10(n-1), its controller on KAFKA_CONTROLLER_PORT + 10(n-1).
KAFKA_PORT=${POSFLOW_KAFKA_PORT:-29092}
KAFKA_CONTROLLER_PORT=${POSFLOW_KAFKA_CONTROLLER_PORT:-29093}
REGISTRY_PORT=${POSFLOW_REGISTRY_PORT:-28081}
REGISTRY_MGMT_PORT=${POSFLOW_REGISTRY_MGMT_PORT:-28082}
REGISTRY_TLS_PORT=${POSFLOW_REGISTRY_TLS_PORT:-28083}
MQTT_PORT=${POSFLOW_MQTT_PORT:-21883}
MQTT_TLS_PORT=${POSFLOW_MQTT_TLS_PORT:-21884}
PG_PORT=${POSFLOW_PG_PORT:-25432}
SMTP_PORT=${POSFLOW_SMTP_PORT:-22525}

# Local-only credentials. Production takes every one of these from a Kubernetes Secret.
PG_PASSWORD=posflow-local
PG_STORAGE_PASSWORD=storage-local
PG_NOTIFIER_PASSWORD=notifier-local
PG_API_PASSWORD=api-local
MQTT_BRIDGE_PASSWORD=bridge-local
MQTT_TERMINAL_PASSWORD=terminal-local
# Terminal ids the local broker knows: T0001..T0500 (the simulator's default naming), each
# registered to one merchant (local_registry).
MQTT_TERMINALS=${POSFLOW_MQTT_TERMINALS:-500}
MQTT_BRIDGE_REPLICAS=8

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

need_apt() {
  local missing=()
  command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
  command -v mosquitto_passwd >/dev/null || missing+=(mosquitto)
  command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
  command -v kcat >/dev/null || missing+=(kcat)
  command -v openssl >/dev/null || missing+=(openssl)
  [ -x "$(pg_bin)/initdb" ] || missing+=(postgresql)
  /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null || missing+=(python3-aiosmtpd)
  # Not the stack's: the portal's tests drive Debian's Chromium over WebDriver (tests/src/browser.rs).
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
  # Not the stack's: `make chart-test` keeps its Kubernetes schemas in a venv.
  /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing from Debian: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  echo "${d:-/usr/lib/postgresql/15/bin}"
}

install_kafka() {
  local lib=$CACHE/kafka-$KAFKA_VERSION/lib
  if [ -f "$lib/.complete" ]; then return; fi
  log "resolving Apache Kafka $KAFKA_VERSION from Maven Central"
  mkdir -p "$lib"
  (cd "$here/kafka" && mvn -B -q "$DEP_PLUGIN:copy-dependencies" -DincludeScope=runtime \
      -DoutputDirectory="$lib")
  touch "$lib/.complete"
}

install_registry() {
  local dir=$CACHE/apicurio-$APICURIO_VERSION
  if [ -f "$dir/.complete" ]; then return; fi
  log "resolving Apicurio Registry $APICURIO_VERSION from Maven Central (~160 MB, once)"
  mkdir -p "$dir"
  local tmp; tmp=$(mktemp -d)
  (cd "$here/kafka" && mvn -B -q "$DEP_PLUGIN:copy" \
      -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
      -DoutputDirectory="$tmp")
  tar xzf "$tmp"/apicurio-registry-app-*.tar.gz -C "$dir"
  rm -rf "$tmp"
  [ -f "$dir/quarkus-run.jar" ] || die "Apicurio archive has no quarkus-run.jar"
  touch "$dir/.complete"
}

cmd_install() {
  need_apt
  command -v java >/dev/null || die "java 17+ is required (Kafka 4.x)"
  command -v mvn >/dev/null || die "mvn is required to fetch Kafka and Apicurio"
  install_kafka
  install_registry
}

# --- process bookkeeping --------------------------------------------------------------------

pidfile() { echo "$STACK/run/$1.pid"; }
running() {
  local f; f=$(pidfile "$1")
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}
start_bg() { # name, command...
  local name=$1; shift
  mkdir -p "$STACK/run" "$STACK/logs"
  setsid "$@" >"$STACK/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$(pidfile "$name")"
}
wait_for() { # name, seconds, check command...
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    running "$name" || { tail -n 30 "$STACK/logs/$name.log" >&2 || true; die "$name exited during start-up (log: $STACK/logs/$name.log)"; }
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$STACK/logs/$name.log" >&2 || true; die "$name not ready after ${secs}s"; }
    sleep 0.5
  done
  log "$name ready"
}
stop_one() { # name [signal]: postgres wants SIGINT (fast shutdown); SIGTERM waits for clients
  local name=$1 sig=${2:-TERM} f; f=$(pidfile "$name")
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    log "$name stopped"
  fi
  rm -f "$f"
}

# --- components -----------------------------------------------------------------------------

# The node count: what the stack was created with, else POSFLOW_KAFKA_NODES, else 1.
kafka_nodes() {
  local kept="" want=${POSFLOW_KAFKA_NODES:-}
  if [ -f "$STACK/kafka/nodes" ]; then kept=$(cat "$STACK/kafka/nodes")
  elif [ -f "$STACK/kafka/data/meta.properties" ]; then kept=1  # a stack from before clusters
  fi
  if [ -n "$kept" ]; then
    [ -z "$want" ] || [ "$want" = "$kept" ] ||
      die "this stack's Kafka has $kept node(s), POSFLOW_KAFKA_NODES=$want: make down, rm -rf $STACK/kafka*, then up again"
    echo "$kept"
  else
    case ${want:-1} in 1|3|5) echo "${want:-1}" ;; *) die "POSFLOW_KAFKA_NODES must be 1, 3 or 5 (a KRaft quorum)" ;; esac
  fi
}
kafka_name() { if [ "$1" = 1 ]; then echo kafka; else echo "kafka-$1"; fi; }
kafka_port() { echo $((KAFKA_PORT + 10 * ($1 - 1))); }
kafka_bootstrap() {
  local n list=""
  for n in $(seq 1 "$(kafka_nodes)"); do list+="${list:+,}127.0.0.1:$(kafka_port "$n")"; done
  echo "$list"
}
# Replication the cluster honours: 3 copies, 2 in sync, from three nodes up.
kafka_replication() { if [ "$(kafka_nodes)" -ge 3 ]; then echo "3 2"; else echo "1 1"; fi; }

up_kafka() { up_kafka_node 1; }
up_kafka_node() {
  local node=$1 nodes name dir lib=$CACHE/kafka-$KAFKA_VERSION/lib voters="" n rf isr
  nodes=$(kafka_nodes); name=$(kafka_name "$node"); dir=$STACK/$name
  running "$name" && return 0
  read -r rf isr <<<"$(kafka_replication)"
  for n in $(seq 1 "$nodes"); do voters+="${voters:+,}$n@127.0.0.1:$((KAFKA_CONTROLLER_PORT + 10 * (n - 1)))"; done
  mkdir -p "$dir/data" "$STACK/kafka"
  echo "$nodes" > "$STACK/kafka/nodes"
  cat > "$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=$node
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(kafka_port "$node"),CONTROLLER://127.0.0.1:$((KAFKA_CONTROLLER_PORT + 10 * (node - 1)))
advertised.listeners=PLAINTEXT://127.0.0.1:$(kafka_port "$node")
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
EOF
  cat > "$dir/log4j2.yaml" <<'EOF'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka
        level: WARN
      - name: org.apache.kafka
        level: WARN
EOF
  if [ ! -f "$dir/data/meta.properties" ]; then
    # One cluster id for every node of the cluster, kept beside the node count.
    local id=$STACK/kafka/cluster.id
    [ -f "$id" ] || java -cp "$lib/*" kafka.tools.StorageTool random-uuid > "$id"
    java -cp "$lib/*" -Dlog4j2.configurationFile="$dir/log4j2.yaml" kafka.tools.StorageTool format \
      -t "$(cat "$id")" -c "$dir/server.properties" --ignore-formatted >/dev/null
  fi
  start_bg "$name" java -Xms512m -Xmx768m -XX:+UseG1GC -Dlog4j2.configurationFile="$dir/log4j2.yaml" \
    -cp "$lib/*" kafka.Kafka "$dir/server.properties"
}

# Apicurio 3.3 is compiled for Java 21; Kafka runs on the machine's Java 17. Take the newest JDK
# under /usr/lib/jvm that is 21 or later (Temurin 25 on our build machines).
registry_java() {
  local j v best="" bestv=0
  for j in "${POSFLOW_REGISTRY_JAVA:-}" /usr/lib/jvm/*/bin/java "$(command -v java)"; do
    [ -n "$j" ] && [ -x "$j" ] || continue
    v=$("$j" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')
    v=${v%%.*}
    if [ "${v:-0}" -gt "$bestv" ]; then best=$j; bestv=$v; fi
  done
  [ "$bestv" -ge 21 ] || die "Apicurio Registry $APICURIO_VERSION needs Java 21+; found Java $bestv at ${best:-nowhere} (set POSFLOW_REGISTRY_JAVA)"
  echo "$best"
}

up_registry() {
  running registry && return 0
  local dir=$CACHE/apicurio-$APICURIO_VERSION java; java=$(registry_java)
  tls_material
  # In-memory storage: provisioning re-registers every schema, so a restart loses nothing we
  # cannot recreate. Production points Apicurio at PostgreSQL or KafkaSQL storage.
  # Two listeners: plain http for most tests, and https with the stack CA's certificate, which
  # the e2e tier reaches with its CA file as production does (docs/local-stack.md).
  start_bg registry "$java" -Xms128m -Xmx512m \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_PORT" \
    -Dquarkus.http.ssl-port="$REGISTRY_TLS_PORT" \
    -Dquarkus.http.ssl.certificate.files="$STACK/tls/server.crt" \
    -Dquarkus.http.ssl.certificate.key-files="$STACK/tls/server.key" \
    -Dquarkus.management.port="$REGISTRY_MGMT_PORT" -Dquarkus.management.host=127.0.0.1 \
    -Dquarkus.log.level=WARN -Dquarkus.banner.enabled=false \
    -jar "$dir/quarkus-run.jar"
}

# Local TLS material (made once per stack): a CA, the broker's certificate for 127.0.0.1 and
# localhost, and client certificates whose CN is the MQTT identity (bridge-0..7, T0001..T0005).
tls_material() {
  local d=$STACK/tls
  [ -f "$d/.complete" ] && return 0
  mkdir -p "$d"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -days 3650 -subj "/CN=posflow-local-ca" -keyout "$d/ca.key" -out "$d/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  sign() { # name, extensions
    openssl req "${ec[@]}" -subj "/CN=$1" -keyout "$d/$1.key" -out "$d/$1.csr" 2>/dev/null
    openssl x509 -req -in "$d/$1.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -days 3650 \
      -extfile <(printf '%s\n' "$2") -out "$d/$1.crt" 2>/dev/null
    rm -f "$d/$1.csr"
  }
  sign server "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
  for n in bridge-0 bridge-1 bridge-2 bridge-3 bridge-4 bridge-5 bridge-6 bridge-7 T0001 T0002 T0003 T0004 T0005; do
    sign "$n" "extendedKeyUsage=clientAuth"
  done
  chmod 600 "$d"/*.key
  touch "$d/.complete"
}

# The local terminal registry: T0001..T0500, terminal n belonging to merchant M00((n-1) mod 5 + 1)
# — the simulator's default fleet (five merchants, terminals dealt round-robin). The broker's ACL
# is generated from it here; `make demo` and every e2e deployment apply it to their registry
# topic with `posflow-admin terminals apply` (or the same library call).
local_registry() {
  local f=$STACK/terminals.toml i
  {
    echo "# Generated by deploy/local/stack.sh: the local stack's terminal registry (docs/terminals.md)."
    for i in $(seq 1 "$MQTT_TERMINALS"); do
      printf '[terminals.T%04d]\nmerchant = "M%03d"\n' "$i" $(( (i - 1) % 5 + 1 ))
    done
  } > "$f"
}

# The MQTT logins' ACL, in Mosquitto's format (HiveMQ's launcher reads the same file).
# Terminals: each publishes only as its registered merchant and itself, and reads only its own
# answers — generated from the registry file, as `posflow-admin terminals acl` does from the
# live registry in production (docs/terminals.md).
mqtt_acl() {
  local i
  local_registry
  awk -F'"' '/^\[terminals\./ { t = substr($0, 12, length($0) - 12) }
             /^merchant = / { printf "user %s\ntopic write pos/%s/%s/tx\ntopic read pos/%s/%s/ack\n", t, $2, t, $2, t }' \
    "$STACK/terminals.toml"
  for i in $(seq 0 $((MQTT_BRIDGE_REPLICAS - 1))); do
    printf 'user bridge-%d\ntopic read pos/+/+/tx\ntopic write pos/+/+/ack\n' "$i"
  done
}

# The MQTT broker: Mosquitto, or HiveMQ CE with POSFLOW_MQTT_BROKER=hivemq. What the stack was
# created with is kept ($STACK/mqtt.broker); `mqtt` names it in start/stop/kill/pause.
mqtt_broker() {
  local kept="" want=${POSFLOW_MQTT_BROKER:-}
  [ -f "$STACK/mqtt.broker" ] && kept=$(cat "$STACK/mqtt.broker")
  if [ -n "$kept" ] && [ -n "$want" ] && [ "$want" != "$kept" ]; then
    die "this stack runs $kept; POSFLOW_MQTT_BROKER=$want needs make down first (or another POSFLOW_STACK)"
  fi
  local b=${kept:-${want:-mosquitto}}
  case $b in mosquitto|hivemq) echo "$b" ;; *) die "POSFLOW_MQTT_BROKER: mosquitto or hivemq, not $b" ;; esac
}
component() { if [ "${1:-}" = mqtt ]; then mqtt_broker; else echo "${1:-}"; fi; }

HIVEMQ_VERSION=2025.5
install_hivemq() {
  local dir=$CACHE/hivemq-$HIVEMQ_VERSION src=$here/hivemq
  if [ ! -s "$dir/classpath" ]; then
    log "resolving HiveMQ CE $HIVEMQ_VERSION (embedded) from Maven Central (once)"
    mkdir -p "$dir"
    mvn -q -B -f "$src/pom.xml" dependency:build-classpath -Dmdep.outputFile="$dir/classpath" >/dev/null
  fi
  if [ ! -f "$dir/classes/Launcher.class" ] || [ "$src/Launcher.java" -nt "$dir/classes/Launcher.class" ]; then
    mkdir -p "$dir/classes"
    javac -d "$dir/classes" -cp "$(cat "$dir/classpath")" "$src/Launcher.java"
  fi
}

up_hivemq() {
  running hivemq && return 0
  install_hivemq
  local dir=$STACK/hivemq cache=$CACHE/hivemq-$HIVEMQ_VERSION i pw=posflow-local
  mkdir -p "$dir/conf" "$dir/data/extensions"
  : > "$dir/users"; chmod 600 "$dir/users"
  for i in $(seq 0 $((MQTT_BRIDGE_REPLICAS - 1))); do echo "bridge-$i:$MQTT_BRIDGE_PASSWORD" >> "$dir/users"; done
  for i in $(seq 1 "$MQTT_TERMINALS"); do printf 'T%04d:%s\n' "$i" "$MQTT_TERMINAL_PASSWORD" >> "$dir/users"; done
  mqtt_acl > "$dir/acl"
  # The stack's server certificate and CA as PKCS#12 key and trust stores.
  openssl pkcs12 -export -in "$STACK/tls/server.crt" -inkey "$STACK/tls/server.key" -name server \
    -passout "pass:$pw" -out "$dir/conf/server.p12"
  rm -f "$dir/conf/ca.p12"
  keytool -importcert -noprompt -alias ca -file "$STACK/tls/ca.crt" -keystore "$dir/conf/ca.p12" \
    -storetype PKCS12 -storepass "$pw" >/dev/null 2>&1 || die "keytool could not import the stack's CA"
  cat > "$dir/conf/config.xml" <<EOF
<?xml version="1.0"?>
<!-- posflow local HiveMQ CE: Mosquitto's settings where HiveMQ has them (docs/bridge.md lists
     what differs). -->
<hivemq>
  <listeners>
    <tcp-listener><port>$MQTT_PORT</port><bind-address>127.0.0.1</bind-address></tcp-listener>
    <tls-tcp-listener><port>$MQTT_TLS_PORT</port><bind-address>127.0.0.1</bind-address>
      <tls>
        <keystore><path>$dir/conf/server.p12</path><password>$pw</password><private-key-password>$pw</private-key-password></keystore>
        <truststore><path>$dir/conf/ca.p12</path><password>$pw</password></truststore>
        <client-authentication-mode>REQUIRED</client-authentication-mode>
      </tls>
    </tls-tcp-listener>
  </listeners>
  <mqtt>
    <queued-messages><max-queue-size>1000000</max-queue-size><strategy>discard</strategy></queued-messages>
    <packets><max-packet-size>32768</max-packet-size></packets>
    <receive-maximum><server-receive-maximum>100</server-receive-maximum></receive-maximum>
  </mqtt>
  <anonymous-usage-statistics><enabled>false</enabled></anonymous-usage-statistics>
</hivemq>
EOF
  cat > "$dir/conf/logback.xml" <<EOF
<configuration>
  <appender name="out" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%d %-5level %logger{20} - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="out"/></root>
  <logger name="com.hivemq" level="INFO"/>
</configuration>
EOF
  start_bg hivemq java -Xms128m -Xmx512m -Dlogback.configurationFile="$dir/conf/logback.xml" \
    -cp "$cache/classes:$(cat "$cache/classpath")" Launcher "$dir/conf" "$dir/data" "$dir/users" "$dir/acl"
}

up_mosquitto() {
  running mosquitto && return 0
  tls_material
  local dir=$STACK/mosquitto
  mkdir -p "$dir/data"
  # Password file: plain lines, then hashed in place (`-U`) in one pass.
  : > "$dir/passwd"
  for i in $(seq 0 $((MQTT_BRIDGE_REPLICAS - 1))); do echo "bridge-$i:$MQTT_BRIDGE_PASSWORD" >> "$dir/passwd"; done
  for i in $(seq 1 "$MQTT_TERMINALS"); do printf 'T%04d:%s\n' "$i" "$MQTT_TERMINAL_PASSWORD" >> "$dir/passwd"; done
  mosquitto_passwd -U "$dir/passwd"
  mqtt_acl > "$dir/acl"
  cat > "$dir/mosquitto.conf" <<EOF
# posflow local broker. Why each setting: docs/local-stack.md.
per_listener_settings false
allow_anonymous false
password_file $dir/passwd
acl_file $dir/acl
persistence true
persistence_location $dir/data/
autosave_interval 5
# The default is 1000 queued per client, and the excess is dropped without a word.
max_queued_messages 1000000
max_queued_bytes 0
max_inflight_messages 100
# Matches the bridge: payloads up to its --max-payload-bytes (16,384) are taken, larger ones up
# to this packet limit are dead-lettered as OVERSIZE and answered, and a packet above it is
# refused here (MQTT 5 reason 0x95) instead of being acknowledged and then dropped by a bridge
# whose own packet limit (2 x payload + 4,096) it exceeds. docs/terminal-contract.md.
max_packet_size 32768
log_dest stdout
log_type error
log_type warning
log_type notice
user root
listener $MQTT_PORT 127.0.0.1
protocol mqtt
use_username_as_clientid true

# TLS with client certificates: the certificate's CN is the username (and the client id), so
# the same ACL applies. No password on this listener.
listener $MQTT_TLS_PORT 127.0.0.1
protocol mqtt
cafile $STACK/tls/ca.crt
certfile $STACK/tls/server.crt
keyfile $STACK/tls/server.key
require_certificate true
use_identity_as_username true
use_username_as_clientid true
EOF
  start_bg mosquitto mosquitto -c "$dir/mosquitto.conf"
}

# Where the PostgreSQL cluster lives: under $STACK, unless (as root) the postgres user cannot
# reach it — a checkout under a private home directory — then in a per-checkout /var/tmp folder.
pg_dir() {
  local dir=$STACK/postgres
  if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$STACK" 2>/dev/null; then
    dir=/var/tmp/posflow-pg-$(printf '%s' "$STACK" | md5sum | cut -c1-12)
  fi
  echo "$dir"
}

up_postgres() {
  running postgres && return 0
  local dir bin; dir=$(pg_dir); bin=$(pg_bin)
  mkdir -p "$dir"
  # initdb refuses to run as root: the cluster belongs to the postgres system user.
  local as=()
  if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); chown postgres "$dir"; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    local pw; pw=$(mktemp); echo "$PG_PASSWORD" > "$pw"; chmod 644 "$pw"
    "${as[@]}" "$bin/initdb" -D "$dir/data" -U posflow --pwfile="$pw" --auth=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pw"
    mkdir -p "$dir/socket"; [ ${#as[@]} -gt 0 ] && chown postgres "$dir/socket"
  fi
  # TLS only over TCP, as a managed database requires it: the stack CA's server certificate
  # (127.0.0.1, localhost), and pg_hba refusing any TCP connection without TLS. Clients connect
  # with sslmode=verify-full (`stack.sh env`). Written on every start, so an older cluster is
  # brought up to this too.
  tls_material
  mkdir -p "$dir/tls"
  cp "$STACK/tls/server.crt" "$dir/tls/server.crt"; cp "$STACK/tls/server.key" "$dir/tls/server.key"
  chmod 600 "$dir/tls/server.key"
  cat > "$dir/data/pg_hba.conf" <<'EOF'
# posflow local stack (deploy/local/stack.sh): password over TLS only.
local     all  all                scram-sha-256
hostssl   all  all  127.0.0.1/32  scram-sha-256
hostssl   all  all  ::1/128       scram-sha-256
hostnossl all  all  0.0.0.0/0     reject
hostnossl all  all  ::/0          reject
EOF
  if [ ${#as[@]} -gt 0 ]; then chown -R postgres "$dir/tls" "$dir/data/pg_hba.conf"; fi
  # track_commit_timestamp: the end-to-end benchmark reads each row's commit time.
  start_bg postgres "${as[@]}" "$bin/postgres" -D "$dir/data" -p "$PG_PORT" -c listen_addresses=127.0.0.1 \
    -c unix_socket_directories="$dir/socket" -c max_connections=100 -c shared_buffers=128MB \
    -c fsync=on -c synchronous_commit=on -c track_commit_timestamp=on \
    -c ssl=on -c ssl_cert_file="$dir/tls/server.crt" -c ssl_key_file="$dir/tls/server.key" \
    -c ssl_min_protocol_version=TLSv1.2
}

pg_ready() { "$(pg_bin)/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q; }
ensure_database() {
  local tls=(env PGPASSWORD="$PG_PASSWORD" PGSSLMODE=verify-full PGSSLROOTCERT="$STACK/tls/ca.crt")
  "${tls[@]}" psql -h 127.0.0.1 -p "$PG_PORT" -U posflow -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='posflow'" | grep -q 1 ||
  "${tls[@]}" psql -h 127.0.0.1 -p "$PG_PORT" -U posflow -d postgres -qc 'CREATE DATABASE posflow'
  # Least privilege (docs/storage.md): `posflow` owns the schema and runs migrations; storage,
  # the notifier and the API log in as members of their stage's group role, which the migrations grant
  # their own tables to. Created here so the logins exist before the first migration.
  local stage
  for stage in storage:$PG_STORAGE_PASSWORD notifier:$PG_NOTIFIER_PASSWORD api:$PG_API_PASSWORD; do
    "${tls[@]}" psql -h 127.0.0.1 -p "$PG_PORT" -U posflow -d posflow -q -v ON_ERROR_STOP=1 <<EOF
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'posflow_${stage%%:*}') THEN
    CREATE ROLE posflow_${stage%%:*} NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'posflow_${stage%%:*}_app') THEN
    CREATE ROLE posflow_${stage%%:*}_app LOGIN PASSWORD '${stage#*:}' IN ROLE posflow_${stage%%:*};
  END IF;
END
\$\$;
EOF
  done
}

up_smtp() {
  running smtp && return 0
  # aiosmtpd's Mailbox handler does not create the maildir's own folders.
  mkdir -p "$STACK/smtp/maildir/tmp" "$STACK/smtp/maildir/new" "$STACK/smtp/maildir/cur"
  start_bg smtp /usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$SMTP_PORT" \
    -c aiosmtpd.handlers.Mailbox "$STACK/smtp/maildir"
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# A node is ready when its metadata lists every node of the cluster as a broker.
kafka_ready() { # node
  local seen
  seen=$(kcat -L -b "127.0.0.1:$(kafka_port "$1")" -m 5 2>/dev/null | grep -c '^  broker [0-9]* at') || return 1
  [ "$seen" -ge "$(kafka_nodes)" ]
}
registry_ready() { curl -fsS "http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7/subjects" >/dev/null; }

wait_ready() {
  case $1 in
    mosquitto) wait_for mosquitto 20 tcp_open "$MQTT_PORT"; wait_for mosquitto 20 tcp_open "$MQTT_TLS_PORT" ;;
    hivemq) wait_for hivemq 120 tcp_open "$MQTT_PORT"; wait_for hivemq 20 tcp_open "$MQTT_TLS_PORT" ;;
    smtp) wait_for smtp 20 tcp_open "$SMTP_PORT" ;;
    postgres) wait_for postgres 60 pg_ready; ensure_database ;;
    kafka) wait_for kafka 120 kafka_ready 1 ;;
    kafka-[0-9]*) wait_for "$1" 120 kafka_ready "${1#kafka-}" ;;
    registry) wait_for registry 180 registry_ready ;;
    *) die "no component $1" ;;
  esac
}

cmd_up() {
  cmd_install
  mkdir -p "$STACK"
  local n kafkas=()
  kafka_nodes >/dev/null  # a node count that does not match the stack's stops here
  for n in $(seq 1 "$(kafka_nodes)"); do up_kafka_node "$n"; kafkas+=("$(kafka_name "$n")"); done
  local mqtt; mqtt=$(mqtt_broker); echo "$mqtt" > "$STACK/mqtt.broker"
  up_registry; "up_$mqtt"; up_postgres; up_smtp
  for n in "$mqtt" smtp postgres "${kafkas[@]}" registry; do wait_ready "$n"; done
  cmd_status
}

cmd_start() {
  [ -n "${1:-}" ] || die "start what?"
  case $1 in
    kafka-[0-9]*) up_kafka_node "${1#kafka-}" ;;
    *) "up_$1" ;;
  esac
  wait_ready "$1"
}

cmd_stop() {
  case ${1:-} in
    postgres) stop_one postgres INT ;;
    kafka|kafka-[0-9]*|registry|mosquitto|hivemq|smtp) stop_one "$1" ;;
    *) die "no component ${1:-}" ;;
  esac
}

# A crash: SIGKILL to the component's process group, no shutdown of any kind.
cmd_kill() {
  running "${1:-}" || die "${1:-?} is not running"
  stop_one "$1" KILL
}

# Freeze a component (SIGSTOP to its process group) and thaw it: a process that holds its
# connections open but answers nothing — the fault a wedged broker or a long GC pause makes.
cmd_signal() { # STOP|CONT name
  running "$2" || die "$2 is not running"
  local pid; pid=$(cat "$(pidfile "$2")")
  kill "-$1" -- "-$pid" 2>/dev/null || kill "-$1" "$pid"
}

cmd_down() {
  local n
  for n in smtp registry mosquitto hivemq; do stop_one "$n"; done
  rm -f "$STACK/mqtt.broker"  # the next `up` may choose another broker
  for n in "$STACK"/run/kafka*.pid; do [ -e "$n" ] && stop_one "$(basename "$n" .pid)"; done
  stop_one postgres INT
}

cmd_status() {
  local n port node
  printf '%-10s %-8s %-24s %s\n' COMPONENT STATE ADDRESS LOG
  for n in kafka registry "$(mqtt_broker)" postgres smtp; do
    case $n in
      kafka)
        for node in $(seq 1 "$(kafka_nodes)"); do status_line "$(kafka_name "$node")" "127.0.0.1:$(kafka_port "$node")"; done
        continue ;;
      registry) port="http://127.0.0.1:$REGISTRY_PORT";;
      mosquitto|hivemq) port="127.0.0.1:$MQTT_PORT,$MQTT_TLS_PORT";; postgres) port="127.0.0.1:$PG_PORT";;
      smtp) port="127.0.0.1:$SMTP_PORT";;
    esac
    status_line "$n" "$port"
  done
  if [ "$(kafka_nodes)" -gt 1 ]; then kafka_leaders; fi
}
status_line() { # name address
  local state
  if running "$1"; then state="up(pid $(cat "$(pidfile "$1")"))"; else state=down; fi
  printf '%-10s %-8s %-24s %s\n' "$1" "$state" "$2" "$STACK/logs/$1.log"
}
# How many partitions each node leads (every topic, the internal ones included), from metadata.
kafka_leaders() {
  local meta node
  meta=$(kcat -L -b "$(kafka_bootstrap)" -m 5 2>/dev/null) || { echo "kafka: no metadata (is a node up?)"; return 0; }
  echo "partitions led (kcat -L):"
  for node in $(seq 1 "$(kafka_nodes)"); do
    printf '  %-8s %s\n' "$(kafka_name "$node")" "$(grep -c "leader $node, " <<<"$meta" || true)"
  done
  printf '  %-8s %s\n' "none" "$(grep -c 'leader -1, ' <<<"$meta" || true)"
}

cmd_env() {
  cat <<EOF
export POSFLOW_KAFKA_BROKERS=$(kafka_bootstrap)
export POSFLOW_LOCAL_KAFKA_NODES=$(kafka_nodes)
export POSFLOW_SCHEMA_REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7
export POSFLOW_MQTT_HOST=127.0.0.1
export POSFLOW_MQTT_PORT=$MQTT_PORT
export POSFLOW_MQTT_PASSWORD=$MQTT_BRIDGE_PASSWORD
export POSFLOW_LOCAL_MQTT_TLS_PORT=$MQTT_TLS_PORT
export POSFLOW_LOCAL_TLS_DIR=$STACK/tls
export POSFLOW_TERMINAL_PASSWORD=$MQTT_TERMINAL_PASSWORD
export POSFLOW_DATABASE_URL='postgres://posflow:$PG_PASSWORD@127.0.0.1:$PG_PORT/posflow?sslmode=verify-full&sslrootcert=$STACK/tls/ca.crt'
export POSFLOW_STORAGE_DATABASE_URL='postgres://posflow_storage_app:$PG_STORAGE_PASSWORD@127.0.0.1:$PG_PORT/posflow?sslmode=verify-full&sslrootcert=$STACK/tls/ca.crt'
export POSFLOW_NOTIFIER_DATABASE_URL='postgres://posflow_notifier_app:$PG_NOTIFIER_PASSWORD@127.0.0.1:$PG_PORT/posflow?sslmode=verify-full&sslrootcert=$STACK/tls/ca.crt'
export POSFLOW_API_DATABASE_URL='postgres://posflow_api_app:$PG_API_PASSWORD@127.0.0.1:$PG_PORT/posflow?sslmode=verify-full&sslrootcert=$STACK/tls/ca.crt'
export POSFLOW_SMTP_ADDR=127.0.0.1:$SMTP_PORT
# The local webhook receivers listen on loopback; production allows no internal network.
export POSFLOW_WEBHOOK_ALLOW_NETWORKS=127.0.0.1/32
export POSFLOW_SMTP_MAILDIR=$STACK/smtp/maildir
export POSFLOW_LOCAL_TERMINALS_FILE=$STACK/terminals.toml
export POSFLOW_LOCAL_REGISTRY_HTTPS_URL=https://127.0.0.1:$REGISTRY_TLS_PORT/apis/ccompat/v7
EOF
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  start) cmd_start "$(component "${2:-}")" ;;
  stop) cmd_stop "$(component "${2:-}")" ;;
  pause) cmd_signal STOP "$(component "${2:?pause what?}")" ;;
  resume) cmd_signal CONT "$(component "${2:?resume what?}")" ;;
  kill) cmd_kill "$(component "${2:-}")" ;;
  replication) read -r rf isr <<<"$(kafka_replication)"; echo "--replication-factor $rf --min-insync-replicas $isr" ;;
  *) echo "usage: $0 install|up|down|status|env|replication|start NAME|stop NAME|kill NAME|pause NAME|resume NAME" >&2; exit 2 ;;
esac

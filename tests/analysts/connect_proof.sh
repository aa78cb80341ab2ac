#!/usr/bin/env bash
# Kafka Connect (standalone, from Maven Central) with Apicurio's Avro converter sinks every
# catalogue topic of the local stack into a file per topic; then each file must hold exactly the
# committed records `posflow-admin tail` reads, and the validated topic the same transaction ids.
# By hand: make connect-proof (after make demo, so the topics hold records). docs/topics.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
eval "$(deploy/local/stack.sh env)"
admin=./target/debug/posflow-admin
lib=$HOME/.cache/posflow/connect/lib
if [ ! -d "$lib" ]; then
  echo "[connect] resolving Kafka Connect and the Apicurio converter (Maven, once)"
  (cd deploy/local/connect && mvn -B -q dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$lib.tmp") && mv "$lib.tmp" "$lib"
fi
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/worker.properties" <<PROPS
bootstrap.servers=$POSFLOW_KAFKA_BROKERS
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=io.apicurio.registry.utils.converter.AvroConverter
value.converter.apicurio.registry.url=${POSFLOW_SCHEMA_REGISTRY_URL%/apis/ccompat/v7}/apis/registry/v2
value.converter.apicurio.registry.as-confluent=true
value.converter.apicurio.registry.use-id=contentId
offset.storage.file.filename=$work/offsets
consumer.isolation.level=read_committed
consumer.auto.offset.reset=earliest
listeners=http://127.0.0.1:0
PROPS
topics=$(env -u POSFLOW_TOPIC_PREFIX $admin topics | awk 'NR > 1 { print $1 }')
connectors=()
for t in $topics; do
  printf 'name=%s-to-file\nconnector.class=org.apache.kafka.connect.file.FileStreamSinkConnector\ntasks.max=1\ntopics=%s\nfile=%s\n' \
    "$t" "$t" "$work/$t.txt" > "$work/$t.properties"
  connectors+=("$work/$t.properties")
done
java -cp "$lib/*" org.apache.kafka.connect.cli.ConnectStandalone "$work/worker.properties" "${connectors[@]}" > "$work/connect.log" 2>&1 &
pid=$!
status=0
printf '%-28s %10s %10s\n' TOPIC TAIL CONNECT
for t in $topics; do
  want=$($admin tail "$t" --from beginning --to-end | wc -l)
  got=0
  for _ in $(seq 1 120); do
    got=0; [ -f "$work/$t.txt" ] && got=$(wc -l < "$work/$t.txt")
    [ "$got" -ge "$want" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/connect.log" >&2; exit 1; }
    sleep 1
  done
  printf '%-28s %10s %10s\n' "$t" "$want" "$got"
  [ "$got" -eq "$want" ] || status=1
done
ids() { grep -o 'transaction_id=[^,}]*' | sed 's/transaction_id=//' | sort -u; }
diff <($admin tail pos.transactions.validated --from beginning --to-end | grep -o '"transaction_id":"[^"]*"' | sed 's/.*:"//; s/"$//' | sort -u) \
     <(ids < "$work/pos.transactions.validated.txt") > /dev/null \
  && echo "pos.transactions.validated: the same transaction ids" \
  || { echo "pos.transactions.validated: transaction ids differ"; status=1; }
grep -m1 -i 'exception' "$work/connect.log" || true
head -c 400 "$work/pos.transactions.validated.txt"; echo " …"
exit $status

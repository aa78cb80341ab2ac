#!/usr/bin/env bash
# The main job: every stage of posflow on the local stack, a fleet of simulated terminals, and a
# summary of what happened to each transaction. Run through `make demo` (which starts the stack
# and builds the binaries first).
#
#   TERMINALS=20 PER_TERMINAL=50 INVALID_EVERY=25 deploy/local/demo.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
eval "$("$here/stack.sh" env)"
STACK=${POSFLOW_STACK:-$repo/.stack}
BIN=${POSFLOW_BIN_DIR:-$repo/target/debug}
TERMINALS=${TERMINALS:-20}
PER_TERMINAL=${PER_TERMINAL:-50}
INVALID_EVERY=${INVALID_EVERY:-25}
# DuckDB for the lake's query (make analyst-tools installs it).
PYTHON=${POSFLOW_ANALYST_PYTHON:-$HOME/.cache/posflow/tools/venv/bin/python}
# Demo-only key. Production takes it from a Kubernetes Secret (see the chart).
export POSFLOW_CARD_TOKEN_KEY=${POSFLOW_CARD_TOKEN_KEY:-demo-only-card-token-key-0123456789abcdef}
# Encrypts the webhook signing secrets in the notifier's table (docs/notifier.md).
export POSFLOW_SECRETS_KEYS=${POSFLOW_SECRETS_KEYS:-demo=ZGVtby1vbmx5LXdlYmhvb2stc2VjcmV0cy1rZXktMDA=}
export POSFLOW_LOG=${POSFLOW_LOG:-info,librdkafka=warn}
logs=$STACK/demo
mkdir -p "$logs"
# Each run gets topics of its own (prefix), so the figures below are this run's alone.
export POSFLOW_TOPIC_PREFIX=demo$(date +%s).

say() { printf '\033[1m[demo]\033[0m %s\n' "$*" >&2; }
port() { case $1 in bridge) echo 19461;; validator) echo 19462;; storage) echo 19463;; fraud) echo 19464;; notifier) echo 19465;; api) echo 19467;; lake) echo 19468;; esac; }
metric() { # service, series: the value, or 0
  curl -fsS "http://127.0.0.1:$(port "$1")/metrics" 2>/dev/null | awk -v s="$2" '$1 == s {print $2; f=1} END {if (!f) print 0}'
}

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop_all EXIT

# The demo is a fresh run: its bridge starts from a clean MQTT session, so nothing queued for
# bridge-0 by earlier runs (or tests) is mixed into this run's figures.
mosquitto_sub -h 127.0.0.1 -p "$POSFLOW_MQTT_PORT" -i bridge-0 -u bridge-0 -P "$POSFLOW_MQTT_PASSWORD" -t posflow/demo/reset -E

"$BIN/posflow-admin" provision --replication-factor 1 --min-insync-replicas 1 --partitions 4 > "$logs/provision.log"
# The simulator's terminals go into the terminal registry (docs/terminals.md): the bridge
# refuses any terminal that is not registered, active and publishing as its own merchant.
"$BIN/posflow-simulator" --terminals "$TERMINALS" --print-registry |
  POSFLOW_OPERATOR=demo "$BIN/posflow-admin" terminals apply --file - > "$logs/terminals.log"
POSFLOW_HTTP_ADDR=127.0.0.1:0 "$BIN/posflow-storage" migrate > "$logs/migrate.log"
POSFLOW_HTTP_ADDR=127.0.0.1:0 "$BIN/posflow-notifier" migrate >> "$logs/migrate.log"
POSFLOW_HTTP_ADDR=127.0.0.1:0 "$BIN/posflow-api" migrate >> "$logs/migrate.log"
# Merchants' delivery preferences (docs/notifier.md) and the merchants' own webhook endpoint: a
# receiver that verifies every signature the way the docs tell merchants to.
export POSFLOW_DEMO_WEBHOOK_SECRET=${POSFLOW_DEMO_WEBHOOK_SECRET:-demo-only-webhook-secret-0123456789}
POSFLOW_DATABASE_URL=$POSFLOW_NOTIFIER_DATABASE_URL \
  "$BIN/posflow-notifier" merchants apply --file "$repo/deploy/config/merchants.toml" > "$logs/merchants.log"
python3 "$here/webhook-receiver.py" --port 19466 --cert "$STACK/tls/server.crt" --key "$STACK/tls/server.key" \
  --stats "$logs/webhooks.json" > "$logs/webhook-receiver.log" 2>&1 &
pids+=($!)
export POSFLOW_SMTP_URL=smtp://$POSFLOW_SMTP_ADDR POSFLOW_WEBHOOK_CA_FILE=$STACK/tls/ca.crt
export POSFLOW_DIGEST_GRACE_SECS=5 POSFLOW_INSTANCE_ID=demo-notifier
# The example rules (per-merchant limits, entry modes, MCCs): docs/validation.md.
export POSFLOW_VALIDATOR_RULES="$repo/deploy/config/validator-rules.toml"
# The merchant API (docs/api.md) over HTTPS with the stack's certificate.
export POSFLOW_API_LISTEN=127.0.0.1:19443 POSFLOW_API_TLS_CERT=$STACK/tls/server.crt POSFLOW_API_TLS_KEY=$STACK/tls/server.key
export POSFLOW_API_CURSOR_KEY=${POSFLOW_API_CURSOR_KEY:-demo-only-cursor-signing-key-0123456789}
# Storage, the notifier and the API log in as their own least-privilege roles (docs/storage.md);
# the migrations above ran as the schema owner.
db_url() { case $1 in storage) echo "$POSFLOW_STORAGE_DATABASE_URL";; notifier) echo "$POSFLOW_NOTIFIER_DATABASE_URL";; api) echo "$POSFLOW_API_DATABASE_URL";; *) echo "$POSFLOW_DATABASE_URL";; esac; }
# The lake (docs/lake.md): Parquet files under the stack's directory, rolled every 2 s so the
# demo's last query sees every row.
export POSFLOW_LAKE_ROOT=$STACK/lake POSFLOW_LAKE_ROLL_SECONDS=2
# Fraud keeps a local copy of its state topics, as deployed (docs/fraud.md, "Local state store").
export POSFLOW_FRAUD_STATE_DIR=$STACK/fraud-state
for s in bridge validator storage fraud notifier api lake; do
  POSFLOW_DATABASE_URL=$(db_url $s) POSFLOW_HTTP_ADDR=127.0.0.1:$(port $s) "$BIN/posflow-$s" > "$logs/$s.log" 2>&1 &
  pids+=($!)
done
i=1 # pids[0] is the webhook receiver
for s in bridge validator storage fraud notifier api lake; do
  pid=${pids[$i]}; i=$((i + 1))
  for _ in $(seq 1 200); do
    curl -fsS "http://127.0.0.1:$(port $s)/readyz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { say "$s exited; log: $logs/$s.log"; tail -5 "$logs/$s.log" >&2; exit 1; }
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$(port $s)/readyz" >/dev/null || { say "$s not ready; log: $logs/$s.log"; tail -5 "$logs/$s.log" >&2; exit 1; }
done
say "bridge, validator, storage, fraud, notifier, API and lake ready (logs in $logs)"
say "simulating $TERMINALS terminals x $PER_TERMINAL transactions (every ${INVALID_EVERY}th breaks a rule on purpose)"

start=$(date +%s.%N)
"$BIN/posflow-simulator" --terminals "$TERMINALS" --per-terminal "$PER_TERMINAL" --invalid-every "$INVALID_EVERY" \
  --json > "$logs/simulator.json"
summary=$(cat "$logs/simulator.json")
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$summary" "$1"; }
run_id=$(field run_id)
published=$(field published)
accepted=$(field accepted)

# Wait until every accepted transaction has been validated and every valid one stored.
deadline=$((SECONDS + 120))
while :; do
  validated=$(metric validator posflow_validator_validated_total)
  rejected=$(metric validator posflow_validator_rejected_total)
  stored=$(psql "$POSFLOW_DATABASE_URL" -tAc "SELECT count(*) FROM transactions WHERE transaction_id LIKE '$run_id-%'")
  rejections=$(psql "$POSFLOW_DATABASE_URL" -tAc "SELECT count(*) FROM rejections WHERE transaction_id LIKE '$run_id-%'")
  say "validated $validated and rejected $rejected of $accepted; stored $stored + $rejections rejections"
  judged=$(metric fraud 'posflow_fraud_received_total{input="card"}')
  in_lake=$(metric lake 'posflow_lake_rows_written_total{table="validated"}')
  if [ $((${validated%.*} + ${rejected%.*})) -ge "$accepted" ] && [ "$stored" -ge "${validated%.*}" ] \
     && [ "$rejections" -ge "${rejected%.*}" ] && [ "${judged%.*}" -ge "${validated%.*}" ] \
     && [ "${in_lake%.*}" -ge "${validated%.*}" ]; then break; fi
  [ $SECONDS -lt $deadline ] || { say "timed out waiting for the pipeline"; exit 1; }
  sleep 1
done
elapsed=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")

# Notifications: every delivery settled, and M003's transactions in a digest (every 30 s).
deadline=$((SECONDS + 90))
while :; do
  pending=$(psql "$POSFLOW_DATABASE_URL" -tAc "SELECT count(*) FROM notification_outbox WHERE status = 'pending'")
  undigested=$(psql "$POSFLOW_DATABASE_URL" -tAc "SELECT count(*) FROM digest_items WHERE transaction_id LIKE '$run_id-%' AND period_end IS NULL")
  say "notifications pending $pending; transactions waiting for their digest $undigested"
  [ "$pending" -eq 0 ] && [ "$undigested" -eq 0 ] && break
  [ $SECONDS -lt $deadline ] || { say "timed out waiting for the notifier"; exit 1; }
  sleep 2
done

echo
echo "posflow demo — run $run_id, topics ${POSFLOW_TOPIC_PREFIX}pos.*"
echo "  published by terminals   $published"
echo "  acknowledged by bridge   $accepted   (in Kafka, answered on each terminal's ack topic)"
echo "  stored in PostgreSQL     $stored"
echo "  rejected by the rules    $rejections   (table rejections, by reason:)"
psql "$POSFLOW_DATABASE_URL" -tA -F ' ' -c "SELECT code, count(*) FROM rejections, unnest(reason_codes) code WHERE transaction_id LIKE '$run_id-%' GROUP BY 1 ORDER BY 2 DESC" |
  awk '{printf "      %-26s %s\n", $1, $2}'
alerts=$(curl -fsS "http://127.0.0.1:$(port fraud)/metrics" | awk '/^posflow_fraud_alerts_total\{/ {s += $2} END {print s + 0}')
echo "  fraud alerts             $alerts   (pos.fraud.alerts, by rule; simulated terminals are fast, so velocity fires:)"
curl -fsS "http://127.0.0.1:$(port fraud)/metrics" | awk -F'[{}"= ]+' '/^posflow_fraud_alerts_total\{/ {printf "      %-26s %s\n", $3, $4}'
notified() { metric notifier "posflow_notifier_attempts_total{channel=\"$1\",status=\"delivered\"}"; }
echo "  notifications            $(notified webhook) webhooks, $(notified email) emails delivered (status: pos.notifications.status)"
python3 - "$logs/webhooks.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"      webhook receiver       {s['keys']} distinct events, {s['bad_signatures']} bad signatures, by type {s['events']}")
PY
echo "      digests (M003, CSV)    $(psql "$POSFLOW_DATABASE_URL" -tAc "SELECT count(DISTINCT period_end) FROM digest_items WHERE transaction_id LIKE '$run_id-%'") emails; mail in $STACK/smtp/maildir/new"
echo "  dead-lettered by bridge  $(python3 -c 'import json,sys; print(sum(json.loads(sys.argv[1])["dead_lettered"].values()))' "$summary")"
echo "  elapsed                  ${elapsed} s ($(python3 -c "print(f'{$published / $elapsed:.0f}')") transactions/s end to end)"
# The merchant API: an owner key for M001 (shown once), then M001's newest transactions.
key=$(POSFLOW_OPERATOR=demo "$BIN/posflow-admin" api-keys create --merchant M001 --role owner --name "demo $run_id" 2>/dev/null | tail -1)
api_curl=(curl -fsS --cacert "$STACK/tls/ca.crt" -H "Authorization: Bearer $key"
  "https://127.0.0.1:19443/v1/merchants/M001/transactions?limit=3")
listed=$("${api_curl[@]}") || { say "the API did not answer; log: $logs/api.log"; exit 1; }
echo "  merchant API             M001's newest transactions, as its systems see them (docs/api.md):"
python3 - "$listed" <<'PY'
import json, sys
for t in json.loads(sys.argv[1])["items"]:
    print(f"      {t['transaction_time']}  {t['terminal_id']}  {t['type']:<8} {t['amount_minor']:>7} {t['currency']}  card ...{t['card']['last4']}")
PY
# The lake: the same transactions as Parquet files, queried with DuckDB (docs/lake.md).
lake_files="$POSFLOW_LAKE_ROOT/${POSFLOW_TOPIC_PREFIX}pos.transactions.validated/*/*.parquet"
lake_query="SELECT merchant_id, count(*) AS transactions, sum(amount_minor) AS amount_minor FROM read_parquet('$lake_files', hive_partitioning = true, union_by_name = true) GROUP BY 1 ORDER BY 1"
echo "  lake (Parquet, DuckDB)   $(metric lake 'posflow_lake_files_written_total{table="validated"}' | cut -d. -f1) files of validated transactions; per merchant:"
"$PYTHON" -c 'import duckdb, sys; print(duckdb.sql(sys.argv[1]))' "$lake_query" | sed '/^$/d; s/^/      /'
echo
echo "The API request above, as it ran (M001's owner key, made just now; the API stops when the demo ends):"
echo "  curl --cacert $STACK/tls/ca.crt -H 'Authorization: Bearer $key' \\"
echo "    'https://127.0.0.1:19443/v1/merchants/M001/transactions?limit=3'"
echo
echo "Query the lake (SQL for DuckDB: the duckdb CLI, or duckdb.sql(...) in $PYTHON):"
echo "  $lake_query"
echo
echo "Query the rows:"
echo "  eval \"\$(deploy/local/stack.sh env)\""
echo "  psql \"\$POSFLOW_DATABASE_URL\" -c \"SELECT merchant_id, currency, count(*), sum(amount_minor) FROM transactions WHERE transaction_id LIKE '$run_id-%' GROUP BY 1, 2 ORDER BY 1\""
echo "More queries: docs/storage.md. Stop the stack: make down."

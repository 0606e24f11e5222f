#!/usr/bin/env bash
# Peak server memory and throughput of one validated upload of a large Parquet file.
#   scripts/upload-memory.sh            # ~1 GB of reoffending cohorts (scale 19, 19 million rows)
#   SCALE=2 scripts/upload-memory.sh    # smaller
# Uses the release binary (cargo build --release -p concordat-cli) unless CONCORDAT_BIN is set.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CONCORDAT_BIN:-${CARGO_TARGET_DIR:-target}/release/concordat}
SCALE=${SCALE:-19}
work=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

"$BIN" synth --out "$work/synth" --scale "$SCALE" --seed 1 --dataset reoffending_cohort >/dev/null
file="$work/synth/reoffending_cohort.parquet"
bytes=$(stat -c %s "$file")

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/secret"
cat > "$work/concordat.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "data"
policies_dir = "$(pwd)/policies"
[auth]
issuer = "measure"
audience = "concordat"
algorithms = ["HS256"]
dev_secret_file = "secret"
[limits]
max_upload_bytes = 8589934592
TOML
"$BIN" serve --config "$work/concordat.toml" > "$work/serve.out" 2> "$work/serve.err" &
pid=$!
for _ in $(seq 1 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(sed -n 's/^concordat listening on //p' "$work/serve.out")
token=$("$BIN" token issue --config "$work/concordat.toml" --partner probation --role uploader)
rss_before=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
start=$(date +%s.%N)
answer=$(curl -sS -X POST -H "Authorization: Bearer $token" -H "content-type: application/vnd.apache.parquet" \
  -T "$file" "$url/v1/datasets/reoffending_cohort/uploads?mode=append")
end=$(date +%s.%N)
peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
# Validation runs in a child process of the server; measure that worker on the same file.
cat > "$work/request.json" <<JSON
{"path":"$file","dataset":"reoffending_cohort","scope":"all","agreements":["measure"],
 "limits":{"max_footer_bytes":16777216,"max_rows":500000000,"max_chunk_uncompressed_bytes":1073741824,
           "max_total_uncompressed_bytes":68719476736,"max_compression_ratio":1000},
 "batch_rows":8192,"memory_bytes":1073741824}
JSON
child="n/a"
if [ -x /usr/bin/time ]; then
  /usr/bin/time -v "$BIN" validate-worker < "$work/request.json" > /dev/null 2> "$work/time.txt"
  child="$(awk -F: '/Maximum resident/ {printf "%d MiB", $2/1024}' "$work/time.txt"), $(awk -F': ' '/Elapsed/ {print $2}' "$work/time.txt") wall"
fi
rows=$(echo "$answer" | grep -o '"rows":[0-9]*' | cut -d: -f2)
secs=$(echo "$end - $start" | bc -l)
printf 'file            %d bytes (%.0f MiB), %s rows\n' "$bytes" "$(echo "$bytes/1048576" | bc -l)" "${rows:-?}"
printf 'upload          %.1f s: %.1f MiB/s, %.0f rows/s (received, validated, committed)\n' "$secs" "$(echo "$bytes/1048576/$secs" | bc -l)" "$(echo "${rows:-0}/$secs" | bc -l)"
printf 'server RSS      %d MiB before, peak %d MiB during the upload\n' "$((rss_before / 1024))" "$((peak / 1024))"
echo "worker          peak $child (the validation child process alone, GNU time; apt-get install time)"
echo "answer          ${answer:0:160}"

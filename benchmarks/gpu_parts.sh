# Shared by the accelerator scripts: `part NAME DEADLINE_FROM_START_S CMD...` runs CMD with the
# time left until DEADLINE (seconds from the script's start), logging to $LOG; a part that fails
# or overruns leaves the others' results. Needs OUT and LOG set; sets start.
start=$(date +%s)
left() { echo $(($1 - ($(date +%s) - start))); }
part() {
  local name=$1 deadline=$2; shift 2
  local t=$(left "$deadline")
  if [ "$t" -lt 20 ]; then echo "## $name: skipped (only ${t}s left)" | tee -a "$LOG"; return; fi
  echo "## $name (limit ${t}s, at $(($(date +%s) - start))s): $*" | tee -a "$LOG"
  timeout --signal=INT --kill-after=10 "$t" "$@" 2>&1 | tee -a "$LOG"
  echo "## $name: rc ${PIPESTATUS[0]} at $(($(date +%s) - start))s" | tee -a "$LOG"
}

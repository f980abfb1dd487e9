# Sourced by the bench scripts that start `writ serve` (or the floor) under
# a tool through a wrapper: the load generator stops the process it started
# with SIGKILL, which would lose the tool's output, so the wrapper runs the
# server in the background, writes its pid to DIR/pid.<something>, and the
# script stops it itself. Used by instructions-per-exchange, pgo-build,
# allocations-per-exchange and bolt-build.

# stop_servers DIR: sends SIGTERM to every server recorded in DIR/pid.*
# (a graceful shutdown, after which valgrind or BOLT's instrumentation
# writes its counts) and waits until each has exited. A server already gone
# is skipped, so it is safe to call again, as the scripts' exit traps do.
# One that has not exited after STOP_WAIT seconds (default 300: valgrind
# writing a large profile is slow) gets SIGKILL and a message, so a hung
# server cannot hang the script's exit.
stop_servers() {
  local f pid waited
  for f in "$1"/pid.*; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || continue
    waited=0
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$waited" -ge "$(( ${STOP_WAIT:-300} * 5 ))" ]; then
        echo "stop_servers: pid $pid still running ${STOP_WAIT:-300} s after SIGTERM; sending SIGKILL (its profile is lost)" >&2
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 0.2
      waited=$(( waited + 1 ))
    done
  done
}

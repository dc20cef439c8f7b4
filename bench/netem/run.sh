#!/usr/bin/env bash
# bench/netem/run.sh -- run an MPI command across emulated, rate-limited network links.
# See bench/netem/README.md and `run.sh --help`.
set -u -o pipefail

PROG=run.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RANK_EXEC="$SCRIPT_DIR/rank-exec.sh"
LINKCHECK_SRC="$SCRIPT_DIR/linkcheck.c"

# Exit codes: 2 = usage error or missing prerequisite (tool, privilege, kernel feature);
#             3 = setting up the emulated network failed; otherwise the command's own status.
EX_USAGE=2
EX_SETUP=3

# Address plan (inside the private namespaces only; the root namespace is never touched).
CTL_NET=10.77.0.0/24 # control network: the bridge in the hub namespace
CTL_HUB=10.77.0.254  # hub (mpirun) address on the bridge; rank i has 10.77.0.(i+1)
MESH_NET=10.78.0.0/16 # mesh: one /30 per pair of ranks, carved from this /16
DATA_ADDR_NET=10.79.0.0/24 # mesh: each rank's one MPI address (on its data0), rank i has 10.79.0.(i+1)
MAX_RANKS=64

usage() {
    cat <<'EOF'
Usage: bench/netem/run.sh --ranks N --rate RATE [--topology star|mesh] [options] -- COMMAND [ARGS...]
       bench/netem/run.sh --rate RATE --topology nodes:RxK --node-rate RATE2 [options] -- COMMAND [ARGS...]
       bench/netem/run.sh --selftest --ranks N --rate RATE [--topology star|mesh|nodes:RxK] [options] [-- LINKCHECK-ARGS]
       bench/netem/run.sh --cleanup

Runs an MPI command with one rank per Linux network namespace, the ranks connected by veth
links shaped with tc, so that the network and not the CPU is the bottleneck. mpirun runs in
a hub namespace (OpenMPI, TCP transport only); each rank is started through `ip netns exec`.
Everything created is torn down on exit, on failure and on Ctrl-C/SIGTERM. Needs root with
CAP_NET_ADMIN + CAP_SYS_ADMIN, ip, tc and mpirun (and mpicc for --selftest).

Topologies:
  star   PCIe-switch-like. Every rank has ONE full-duplex link of RATE to a bridge in the
         hub namespace (shaped on both ends of its veth), through which all its traffic
         passes: two sends from one rank share RATE, as do two sends to one rank.

             r0 ==+
             r1 ==+== [bridge, hub: mpirun]      == : shaped veth, RATE each way
             r2 ==+

  mesh   NVLink-bridge-like, fully connected. One shaped veth link of RATE per pair of
         ranks (N(N-1)/2 links, each its own /30), plus an unshaped control network (the
         hub's bridge) used only for start-up. Each rank's MPI address is routed (/32 host
         routes) through the direct link to that rank, so MPI data never leaves the mesh.

             r0 ========= r1       every rank also has an unshaped control veth
               \\       //         to the bridge in the hub (where mpirun runs)
                 \\   //
                   r2

  nodes:RxK  two-level: R nodes of K ranks (N = R*K; --ranks may be left out). Inside a node
         every rank has one link of RATE to the node's switch (a bridge in the node's own
         namespace), as in star; each node has ONE uplink of --node-rate to the core switch
         (the hub's bridge), shaped on both ends, through which all its inter-node traffic
         passes. Rank i is on node i / K. The ranks get FLASHRING_RANKS_PER_NODE=K, which
         flashring's MPI communicator takes as its node layout (Communicator::nodeIds).

             r0 ==+                          r2 ==+
             r1 ==+== [node 0] --+-- [node 1] ==+ r3     == : RATE,  -- : --node-rate
                                 [hub: mpirun]

Options:
  --ranks N          number of MPI ranks, 2..64 (required)
  --rate RATE        link rate per direction, tc syntax: 100mbit, 1gbit, 2.5gbit, 500kbit,
                     or bytes per second: 125mbps (required)
  --topology T       star (default), mesh, or nodes:RxK (two-level: R nodes of K ranks)
  --node-rate RATE   nodes:RxK only (required there): each node's uplink rate per direction
  --burst B          token bucket size, tc size (1mb, 512kb, 131072). Default max(1mb, 8 ms
                     of RATE); at least 128kb
  --peak P           tbf peak rate as a multiple of RATE (default 1.2; 0 = none): the burst
                     drains at most at P x RATE, so a message sent after an idle period is
                     at most ~P times faster than RATE (without it, up to B bytes pass at
                     memory speed)
  --limit L          queue limit of each shaped interface, tc size (default 2x burst)
  --shaper S         tbf (default) or htb (no peak rate; measured worse, see README)
  --delay D          one-way delay added per direction on every shaped link (1ms, 200us;
                     default 0ms). Needs the kernel's netem qdisc: refused (exit 2) without
                     it, and this machine's kernel has none
  --mpirun-arg ARG   one extra argument for mpirun (repeatable): --mpirun-arg -x
                     --mpirun-arg FOO=1. A `--mca NAME VALUE` given this way replaces ours
  --selftest         build bench/netem/linkcheck.c with mpicc into a temp dir and run it
                     (one-way, both ways, one-to-two, two-to-one, after-idle; key=value
                     lines). Arguments after -- go to linkcheck (e.g. -- --pairs --incast)
  --dry-run          print the commands that would run; run nothing (needs no privileges)
  --cleanup          remove namespaces and temp dirs left by earlier runs of this script
                     that were killed (SIGKILL) before cleaning up; namespaces of runs still
                     alive are left alone. On its own: clean up and exit
  -v, --verbose      print every setup command (stderr) as it runs
  -q, --quiet        no summary lines on stderr
  -h, --help         this help

MPI settings used (each replaceable through --mpirun-arg --mca NAME VALUE): pml ob1,
btl tcp,self, osc ^ucx,sm, coll ^sm, btl_tcp_if_include <data net>, oob_tcp_if_include
10.77.0.0/24, btl_tcp_flags send,inplace,need-ack,need-csum (no emulated RDMA put),
mpi_yield_when_idle 1; plus --oversubscribe --allow-run-as-root --bind-to none and
PMIX_MCA_ptl_tcp_remote_connections=1, PMIX_MCA_ptl_tcp_if_include=10.77.0.0/24.

Exit status: that of COMMAND as mpirun reports it (127 if it is not found); 2 for usage
errors and missing tools, privileges or kernel features; 3 if building the emulated network
failed; 130/143/129 on SIGINT/SIGTERM/SIGHUP (after teardown).

Examples:
  bench/netem/run.sh --selftest --ranks 3 --rate 1gbit --topology mesh
  bench/netem/run.sh --ranks 8 --rate 1gbit --topology star -- ./build/bench/bench_allreduce --json out.json
  bench/netem/run.sh --dry-run --ranks 4 --rate 500mbit --topology mesh -- ./a.out
EOF
}

die_usage() {
    echo "$PROG: error: $*" >&2
    echo "$PROG: try '$PROG --help'" >&2
    exit $EX_USAGE
}
die_prereq() {
    echo "$PROG: error: $*" >&2
    exit $EX_USAGE
}
die_setup() {
    echo "$PROG: error: $*" >&2
    exit $EX_SETUP
}
info() { ((QUIET)) || echo "$PROG: $*" >&2; }

# ---------------------------------------------------------------- arguments
RANKS=""
RATE=""
NODE_RATE=""
NODES=0     # nodes:RxK: R
PER_NODE=0  # nodes:RxK: K
TOPO=star
DELAY=0ms
BURST=""
LIMIT=""
SHAPER=tbf
PEAK=""
DRY=0
CLEANUP=0
SELFTEST=0
VERBOSE=0
QUIET=0
MPIRUN_EXTRA=()
CMD=()

need_val() { [[ $# -ge 2 && -n "$2" ]] || die_usage "option $1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
    --ranks) need_val "$@"; RANKS=$2; shift 2 ;;
    --ranks=*) RANKS=${1#*=}; shift ;;
    --rate) need_val "$@"; RATE=$2; shift 2 ;;
    --rate=*) RATE=${1#*=}; shift ;;
    --topology) need_val "$@"; TOPO=$2; shift 2 ;;
    --topology=*) TOPO=${1#*=}; shift ;;
    --node-rate) need_val "$@"; NODE_RATE=$2; shift 2 ;;
    --node-rate=*) NODE_RATE=${1#*=}; shift ;;
    --delay) need_val "$@"; DELAY=$2; shift 2 ;;
    --delay=*) DELAY=${1#*=}; shift ;;
    --burst) need_val "$@"; BURST=$2; shift 2 ;;
    --burst=*) BURST=${1#*=}; shift ;;
    --limit) need_val "$@"; LIMIT=$2; shift 2 ;;
    --limit=*) LIMIT=${1#*=}; shift ;;
    --shaper) need_val "$@"; SHAPER=$2; shift 2 ;;
    --peak) need_val "$@"; PEAK=$2; shift 2 ;;
    --peak=*) PEAK=${1#*=}; shift ;;
    --shaper=*) SHAPER=${1#*=}; shift ;;
    --mpirun-arg) [[ $# -ge 2 ]] || die_usage "option $1 needs a value"; MPIRUN_EXTRA+=("$2"); shift 2 ;;
    --mpirun-arg=*) MPIRUN_EXTRA+=("${1#*=}"); shift ;;
    --selftest) SELFTEST=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --cleanup) CLEANUP=1; shift ;;
    -v | --verbose) VERBOSE=1; shift ;;
    -q | --quiet) QUIET=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; CMD=("$@"); break ;;
    -*) die_usage "unknown option '$1'" ;;
    *) die_usage "unexpected argument '$1' (put the command after --)" ;;
    esac
done

# Sizes and rates: convert tc syntax to numbers (bits/s, bytes) for validation and defaults.
rate_to_bps() { # prints bits per second, or fails
    local s=${1,,} num unit
    [[ $s =~ ^([0-9]+(\.[0-9]+)?)(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps)$ ]] || return 1
    num=${BASH_REMATCH[1]} unit=${BASH_REMATCH[3]}
    awk -v n="$num" -v u="$unit" 'BEGIN {
        m["bit"]=1; m["kbit"]=1e3; m["mbit"]=1e6; m["gbit"]=1e9; m["tbit"]=1e12;
        m["bps"]=8; m["kbps"]=8e3; m["mbps"]=8e6; m["gbps"]=8e9; m["tbps"]=8e12;
        v = n * m[u]; if (v < 8000) exit 1; printf "%.0f\n", v }'
}
size_to_bytes() { # tc size syntax: b, k/kb, m/mb, g/gb (bytes, binary multiples), kbit/mbit/gbit
    local s=${1,,} num unit
    [[ $s =~ ^([0-9]+(\.[0-9]+)?)(b|k|kb|m|mb|g|gb|kbit|mbit|gbit)?$ ]] || return 1
    num=${BASH_REMATCH[1]} unit=${BASH_REMATCH[3]}
    awk -v n="$num" -v u="$unit" 'BEGIN {
        m[""]=1; m["b"]=1; m["k"]=1024; m["kb"]=1024; m["m"]=1048576; m["mb"]=1048576;
        m["g"]=1073741824; m["gb"]=1073741824; m["kbit"]=128; m["mbit"]=131072; m["gbit"]=134217728;
        v = n * m[u]; if (v < 1) exit 1; printf "%.0f\n", v }'
}
time_to_us() {
    local s=${1,,} num unit
    [[ $s =~ ^([0-9]+(\.[0-9]+)?)(us|usec|ms|msec|s|sec)$ ]] || return 1
    num=${BASH_REMATCH[1]} unit=${BASH_REMATCH[3]}
    awk -v n="$num" -v u="$unit" 'BEGIN {
        m["us"]=1; m["usec"]=1; m["ms"]=1000; m["msec"]=1000; m["s"]=1e6; m["sec"]=1e6;
        printf "%.0f\n", n * m[u] }'
}

validate_args() {
    if [[ $TOPO =~ ^nodes:([0-9]+)x([0-9]+)$ ]]; then
        NODES=$((10#${BASH_REMATCH[1]})) PER_NODE=$((10#${BASH_REMATCH[2]}))
        ((NODES >= 2 && PER_NODE >= 1)) || die_usage "--topology nodes:RxK needs R >= 2 nodes and K >= 1 ranks each, got '$TOPO'"
        [[ -z $RANKS ]] && RANKS=$((NODES * PER_NODE))
        [[ $RANKS =~ ^[0-9]+$ ]] && ((10#$RANKS == NODES * PER_NODE)) ||
            die_usage "--ranks $RANKS does not match --topology $TOPO ($((NODES * PER_NODE)) ranks)"
        [[ -n $NODE_RATE ]] || die_usage "--topology $TOPO needs --node-rate RATE (each node's uplink)"
        NODE_RATE_BPS=$(rate_to_bps "$NODE_RATE") ||
            die_usage "--node-rate '$NODE_RATE' is not a rate like 100mbit, 1gbit, 2.5gbit or 125mbps (at least 8kbit)"
        TOPO=nodes
    elif [[ -n $NODE_RATE ]]; then
        die_usage "--node-rate applies to --topology nodes:RxK only"
    fi
    [[ -n $RANKS ]] || die_usage "--ranks N is required"
    [[ $RANKS =~ ^[0-9]+$ ]] || die_usage "--ranks must be an integer, got '$RANKS'"
    RANKS=$((10#$RANKS))
    ((RANKS >= 2)) || die_usage "--ranks must be at least 2, got $RANKS"
    ((RANKS <= MAX_RANKS)) || die_usage "--ranks must be at most $MAX_RANKS, got $RANKS"
    [[ -n $RATE ]] || die_usage "--rate RATE is required (e.g. 1gbit, 100mbit)"
    RATE_BPS=$(rate_to_bps "$RATE") ||
        die_usage "--rate '$RATE' is not a rate like 100mbit, 1gbit, 2.5gbit or 125mbps (at least 8kbit)"
    case "$TOPO" in star | mesh | nodes) ;; *) die_usage "--topology must be star, mesh or nodes:RxK, got '$TOPO'" ;; esac
    case "$SHAPER" in tbf | htb) ;; *) die_usage "--shaper must be tbf or htb, got '$SHAPER'" ;; esac
    DELAY_US=$(time_to_us "$DELAY") || die_usage "--delay '$DELAY' is not a time like 0ms, 1ms, 200us"
    local rate_Bps=$((RATE_BPS / 8))
    # burst: default max(1 MiB, 8 ms of RATE)
    if [[ -n $BURST ]]; then
        BURST_B=$(size_to_bytes "$BURST") || die_usage "--burst '$BURST' is not a size like 1mb, 512kb, 65536"
        ((BURST_B >= 131072)) ||
            die_usage "--burst must be at least 128kb (two 64 KiB GSO packets; less stalls TCP), got '$BURST'"
    else
        BURST_B=$((rate_Bps * 8 / 1000))
        ((BURST_B < 1048576)) && BURST_B=1048576
    fi
    # limit: default 2x burst
    if [[ -n $LIMIT ]]; then
        LIMIT_B=$(size_to_bytes "$LIMIT") || die_usage "--limit '$LIMIT' is not a size like 4mb, 1mb"
        ((LIMIT_B >= 131072)) || die_usage "--limit must be at least 128kb (two 64 KiB GSO packets), got '$LIMIT'"
    else
        LIMIT_B=$((2 * BURST_B))
    fi
    # peak rate: the burst drains at most at PEAK x RATE; its bucket holds max(128 KiB, 1 ms of RATE)
    if [[ -z $PEAK ]]; then
        if [[ $SHAPER == tbf ]]; then PEAK=1.2; else PEAK=0; fi
    fi
    [[ $PEAK =~ ^[0-9]+(\.[0-9]+)?$ ]] || die_usage "--peak must be a number (a multiple of the rate, or 0 for none), got '$PEAK'"
    PEAK_BPS=$(awk -v r="$RATE_BPS" -v m="$PEAK" 'BEGIN{printf "%.0f", r*m}')
    if ((PEAK_BPS > 0)); then
        awk -v m="$PEAK" 'BEGIN{exit !(m > 1.0)}' || die_usage "--peak must be greater than 1 (or 0 for no peak rate), got '$PEAK'"
        [[ $SHAPER == tbf ]] || die_usage "--peak needs --shaper tbf (htb has no peak rate); add --peak 0"
    fi
    MINBURST_B=$((rate_Bps / 1000))
    ((MINBURST_B < 131072)) && MINBURST_B=131072
    ((MINBURST_B > BURST_B)) && MINBURST_B=$BURST_B
    if [[ $TOPO == nodes ]]; then
        # the uplinks' own defaults, from their rate (a --burst / --limit given applies to every link)
        local node_Bps=$((NODE_RATE_BPS / 8))
        if [[ -n $BURST ]]; then NODE_BURST_B=$BURST_B; else
            NODE_BURST_B=$((node_Bps * 8 / 1000))
            ((NODE_BURST_B < 1048576)) && NODE_BURST_B=1048576
        fi
        if [[ -n $LIMIT ]]; then NODE_LIMIT_B=$LIMIT_B; else NODE_LIMIT_B=$((2 * NODE_BURST_B)); fi
        NODE_PEAK_BPS=$(awk -v r="$NODE_RATE_BPS" -v m="$PEAK" 'BEGIN{printf "%.0f", r*m}')
        NODE_MINBURST_B=$((node_Bps / 1000))
        ((NODE_MINBURST_B < 131072)) && NODE_MINBURST_B=131072
        ((NODE_MINBURST_B > NODE_BURST_B)) && NODE_MINBURST_B=$NODE_BURST_B
    fi
    if ((SELFTEST)); then
        :
    elif ((${#CMD[@]} == 0)); then
        die_usage "no command given (put it after --), or use --selftest or --cleanup"
    fi
}

# ---------------------------------------------------------------- command execution
# Every state-changing command goes through RUN: printed in --dry-run, executed otherwise.
RUN() {
    if ((DRY)); then
        local line
        line=$(printf '%q ' "$@")
        echo "${line% }"
        return 0
    fi
    if ((VERBOSE)); then
        { printf '+ '; printf '%q ' "$@"; echo; } >&2
    fi
    local err
    if ! err=$("$@" 2>&1 >/dev/null); then
        echo "$PROG: command failed: $(printf '%q ' "$@")" >&2
        [[ -n $err ]] && echo "$PROG:   $err" >&2
        return 1
    fi
    return 0
}

# ---------------------------------------------------------------- teardown
PREFIX="frn$$"
HUB="$PREFIX-hub"
CREATED_NS=() # namespaces this run created (or is creating), torn down in reverse order
TMPD=""
MPIRUN_PID=""
TEARING_DOWN=0

kill_ns_procs() { # kill whatever still runs in namespace $1 (only our ranks can be there)
    local ns=$1 pids i
    pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
    [[ -z ${pids// /} ]] && return 0
    kill -TERM $pids 2>/dev/null
    for i in 1 2 3 4 5 6 7 8 9 10; do
        sleep 0.2
        pids=$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')
        [[ -z ${pids// /} ]] && return 0
    done
    kill -KILL $pids 2>/dev/null
    sleep 0.1
}

teardown() {
    ((TEARING_DOWN)) && return 0
    TEARING_DOWN=1
    if [[ -n $MPIRUN_PID ]] && kill -0 "$MPIRUN_PID" 2>/dev/null; then
        kill -TERM "$MPIRUN_PID" 2>/dev/null
        local i
        for i in $(seq 1 25); do
            kill -0 "$MPIRUN_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$MPIRUN_PID" 2>/dev/null
        wait "$MPIRUN_PID" 2>/dev/null
    fi
    local idx ns
    for ((idx = ${#CREATED_NS[@]} - 1; idx >= 0; idx--)); do
        ns=${CREATED_NS[idx]}
        [[ -e /run/netns/$ns ]] || continue
        kill_ns_procs "$ns"
        ip netns delete "$ns" 2>/dev/null || echo "$PROG: warning: could not delete namespace $ns" >&2
    done
    [[ -n $TMPD && -d $TMPD ]] && rm -rf "$TMPD"
    return 0
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM HUP
    teardown
    exit $rc
}
on_signal() {
    local sig=$1 code=$2
    trap - INT TERM HUP
    echo "$PROG: caught SIG$sig, tearing down" >&2
    exit "$code" # runs on_exit
}

# ---------------------------------------------------------------- stale cleanup (--cleanup)
cleanup_stale() {
    local ns pid removed=0 d
    command -v ip >/dev/null 2>&1 || die_prereq "required tool 'ip' (iproute2) not found in PATH"
    while read -r ns _; do
        [[ $ns =~ ^frn([0-9]+)-(hub|probe|r[0-9]+)$ ]] || continue
        pid=${BASH_REMATCH[1]}
        if [[ $pid == "$$" ]]; then continue; fi
        if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' </proc/"$pid"/cmdline | grep -q 'run\.sh'; then
            info "leaving $ns alone: its run (pid $pid) is still alive"
            continue
        fi
        if ((DRY)); then
            echo "ip netns delete $ns"
        else
            kill_ns_procs "$ns"
            ip netns delete "$ns" && removed=$((removed + 1))
        fi
    done < <(ip netns list 2>/dev/null)
    for d in /tmp/frn[0-9]*.netem.*; do
        [[ -d $d ]] || continue
        [[ $d =~ ^/tmp/frn([0-9]+)\.netem\. ]] || continue
        pid=${BASH_REMATCH[1]}
        [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' </proc/"$pid"/cmdline | grep -q 'run\.sh' && continue
        if ((DRY)); then echo "rm -rf $d"; else rm -rf "$d"; fi
    done
    ((DRY)) || info "cleanup: removed $removed stale namespace(s)"
}

# ---------------------------------------------------------------- prerequisites
check_prereqs() {
    local t
    for t in ip tc mpirun; do
        command -v "$t" >/dev/null 2>&1 || die_prereq "required tool '$t' not found in PATH"
    done
    if ((SELFTEST)); then
        command -v mpicc >/dev/null 2>&1 || die_prereq "required tool 'mpicc' (for --selftest) not found in PATH"
    fi
    # need CAP_NET_ADMIN (bit 12) and CAP_SYS_ADMIN (bit 21) in the effective set (root normally has both)
    local capeff missing=()
    capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status 2>/dev/null)
    if [[ -n $capeff ]]; then
        (((0x$capeff >> 12) & 1)) || missing+=(CAP_NET_ADMIN)
        (((0x$capeff >> 21) & 1)) || missing+=(CAP_SYS_ADMIN)
    elif [[ $(id -u) -ne 0 ]]; then
        missing+=(root)
    fi
    if ((${#missing[@]})); then
        local who="running as root but without"
        [[ $(id -u) -ne 0 ]] && who="not root and without"
        die_prereq "cannot create network namespaces: $who ${missing[*]} (run as root with full capabilities)"
    fi
}

# ---------------------------------------------------------------- building the network
rank_ns() { echo "$PREFIX-r$1"; }
node_ns() { echo "$PREFIX-n$1"; }
ctl_addr() { echo "10.77.0.$(($1 + 1))"; }
# mesh link index for pair i<j, and the address of rank $1 on the link to rank $2
pair_index() {
    local i=$1 j=$2
    if ((i > j)); then local t=$i; i=$j; j=$t; fi
    echo $((i * RANKS - i * (i + 1) / 2 + (j - i - 1)))
}
mesh_addr() { # address of rank $1 on its link to rank $2
    local k base
    k=$(pair_index "$1" "$2")
    base=$((k * 4 + ($1 < $2 ? 1 : 2)))
    echo "10.78.$((base >> 8)).$((base & 255))"
}

data_addr() { echo "10.79.0.$(($1 + 1))"; }
# Mesh addressing: "rank" (default): every rank has ONE MPI address (on a local interface data0)
# that its peers reach by a /32 route over their direct link, so OpenMPI opens one TCP connection
# per pair. "link" (the plain recipe, for comparison; FRN_MESH_ADDRESSING=link): MPI uses the
# per-link /30 addresses; OpenMPI then opens N-1 connections per pair (one per local interface)
# and stripes each message over them, all on the one direct link - measured less stable.
MESH_ADDRESSING=${FRN_MESH_ADDRESSING:-rank}

tc_size() { echo "${1}b"; }

# shape NS DEV [node]: rate-limit the egress of DEV in namespace NS at RATE (with "node": at --node-rate,
# with the uplinks' burst and limit)
shape() {
    local ns=$1 dev=$2 parent
    local burst limit rate_bps=$RATE_BPS peak_bps=$PEAK_BPS minburst_b=$MINBURST_B
    burst=$(tc_size "$BURST_B")
    limit=$(tc_size "$LIMIT_B")
    local limit_b=$LIMIT_B
    if [[ ${3:-} == node ]]; then
        rate_bps=$NODE_RATE_BPS peak_bps=$NODE_PEAK_BPS minburst_b=$NODE_MINBURST_B limit_b=$NODE_LIMIT_B
        burst=$(tc_size "$NODE_BURST_B")
        limit=$(tc_size "$NODE_LIMIT_B")
    fi
    if ((DELAY_US > 0)); then
        # netem for the delay at the root, the shaper below it (see tc-netem(8))
        local pkts=$((limit_b / 1000 + 1000))
        RUN tc -n "$ns" qdisc add dev "$dev" root handle 1: netem delay "${DELAY_US}us" limit "$pkts" || return 1
        parent="parent 1:1 handle 10:"
    else
        parent="root handle 1:"
    fi
    if [[ $SHAPER == tbf ]]; then
        # shellcheck disable=SC2086
        local peak=()
        if ((peak_bps > 0)); then
            peak=(peakrate "${peak_bps}bit" mtu "$(tc_size "$minburst_b")")
        fi
        RUN tc -n "$ns" qdisc add dev "$dev" $parent tbf rate "$rate_bps"bit burst "$burst" limit "$limit" "${peak[@]}" || return 1
    else
        local h
        if ((DELAY_US > 0)); then h=10; else h=1; fi
        # quantum: keep htb from warning about huge quanta; one class takes everything anyway
        # shellcheck disable=SC2086
        RUN tc -n "$ns" qdisc add dev "$dev" $parent htb default 1 r2q 100000 || return 1
        RUN tc -n "$ns" class add dev "$dev" parent "$h": classid "$h":1 htb rate "$rate_bps"bit ceil "$rate_bps"bit \
            burst "$burst" cburst "$burst" quantum 60000 || return 1
        RUN tc -n "$ns" qdisc add dev "$dev" parent "$h":1 handle "$((h + 1))": bfifo limit "$limit" || return 1
    fi
}

ns_add() {
    local ns=$1 err
    if ((!DRY)) && [[ -e /run/netns/$ns ]]; then
        # same pid as an earlier run that was killed before cleaning up: not ours to delete
        die_setup "namespace $ns already exists (left by a killed earlier run?); remove it with: $0 --cleanup"
    fi
    CREATED_NS+=("$ns")
    if ((DRY)); then
        echo "ip netns add $ns"
        return 0
    fi
    ((VERBOSE)) && echo "+ ip netns add $ns" >&2
    if ! err=$(ip netns add "$ns" 2>&1); then
        if [[ $ns == "$HUB" ]]; then
            die_prereq "cannot create network namespaces: 'ip netns add' failed: $err"
        fi
        die_setup "ip netns add $ns failed: $err"
    fi
}

ns_sysctl() { # disable IPv6 (no DAD/RS noise, MPI stays on IPv4) and reverse-path filtering
    local ns=$1
    RUN ip netns exec "$ns" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 \
        net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 || return 1
}

build_network() {
    local i j ns
    # hub with the bridge (the star's switch; the mesh's control network)
    ns_add "$HUB"
    ns_sysctl "$HUB" || die_setup "sysctl in $HUB failed"
    RUN ip -n "$HUB" link set lo up || die_setup "lo up in $HUB failed"
    RUN ip -n "$HUB" link add br0 type bridge stp_state 0 forward_delay 0 ||
        die_setup "cannot create a bridge in the hub namespace (CONFIG_BRIDGE?)"
    RUN ip -n "$HUB" addr add "$CTL_HUB/24" dev br0 || die_setup "address on br0 failed"
    RUN ip -n "$HUB" link set br0 up || die_setup "br0 up failed"

    # nodes:RxK: a namespace per node holding its switch (bridge nbr0), with one uplink veth to the hub's bridge
    local k nns
    for ((k = 0; k < NODES; k++)); do
        nns=$(node_ns "$k")
        ns_add "$nns"
        ns_sysctl "$nns" || die_setup "sysctl in $nns failed"
        RUN ip -n "$nns" link set lo up || die_setup "lo up in $nns failed"
        RUN ip -n "$nns" link add nbr0 type bridge stp_state 0 forward_delay 0 || die_setup "bridge in $nns failed"
        RUN ip -n "$nns" link set nbr0 up || die_setup "nbr0 up in $nns failed"
        RUN ip -n "$HUB" link add "n$k" type veth peer name uplink netns "$nns" ||
            die_setup "cannot create veth pair hub:n$k <-> $nns:uplink"
        RUN ip -n "$HUB" link set "n$k" master br0 up || die_setup "n$k into the hub's bridge failed"
        RUN ip -n "$nns" link set dev uplink master nbr0 up || die_setup "uplink into $nns's bridge failed"
        shape "$nns" uplink node || die_setup "tc $SHAPER shaping on $nns:uplink failed (CONFIG_NET_SCH_${SHAPER^^}?)"
        shape "$HUB" "n$k" node || die_setup "tc $SHAPER shaping on $HUB:n$k failed"
    done

    for ((i = 0; i < RANKS; i++)); do
        ns=$(rank_ns "$i")
        ns_add "$ns"
        ns_sysctl "$ns" || die_setup "sysctl in $ns failed"
        RUN ip -n "$ns" link set lo up || die_setup "lo up in $ns failed"
        # veth created inside the switch's namespace (the hub's, or the rank's node's), its peer end moved
        # straight into the rank namespace
        local rdev=eth0 sw=$HUB br=br0
        [[ $TOPO == mesh ]] && rdev=ctl
        if [[ $TOPO == nodes ]]; then sw=$(node_ns $((i / PER_NODE))) br=nbr0; fi
        RUN ip -n "$sw" link add "r$i" type veth peer name "$rdev" netns "$ns" ||
            die_setup "cannot create veth pair $sw:r$i <-> $ns:$rdev (CONFIG_VETH?)"
        RUN ip -n "$sw" link set "r$i" master "$br" up || die_setup "r$i into bridge failed"
        RUN ip -n "$ns" addr add "$(ctl_addr "$i")/24" dev "$rdev" || die_setup "address on $ns:$rdev failed"
        RUN ip -n "$ns" link set "$rdev" up || die_setup "$ns:$rdev up failed"
        if [[ $TOPO == star || $TOPO == nodes ]]; then
            # both ends: rank uplink (rank -> switch) and downlink (switch -> rank)
            shape "$ns" "$rdev" || die_setup "tc $SHAPER shaping on $ns:$rdev failed (CONFIG_NET_SCH_${SHAPER^^}?)"
            shape "$sw" "r$i" || die_setup "tc $SHAPER shaping on $sw:r$i failed"
        fi
    done

    if [[ $TOPO == mesh ]]; then
        local ni nj ai aj
        for ((i = 0; i < RANKS; i++)); do
            for ((j = i + 1; j < RANKS; j++)); do
                ni=$(rank_ns "$i") nj=$(rank_ns "$j")
                ai=$(mesh_addr "$i" "$j") aj=$(mesh_addr "$j" "$i")
                # on rank i the link to j is p<j>, on rank j the link to i is p<i>
                RUN ip -n "$ni" link add "p$j" type veth peer name "p$i" netns "$nj" ||
                    die_setup "cannot create veth pair $ni:p$j <-> $nj:p$i"
                RUN ip -n "$ni" addr add "$ai/30" dev "p$j" || die_setup "address on $ni:p$j failed"
                RUN ip -n "$nj" addr add "$aj/30" dev "p$i" || die_setup "address on $nj:p$i failed"
                RUN ip -n "$ni" link set "p$j" up || die_setup "$ni:p$j up failed"
                RUN ip -n "$nj" link set "p$i" up || die_setup "$nj:p$i up failed"
                shape "$ni" "p$j" || die_setup "tc $SHAPER shaping on $ni:p$j failed (CONFIG_NET_SCH_${SHAPER^^}?)"
                shape "$nj" "p$i" || die_setup "tc $SHAPER shaping on $nj:p$i failed"
            done
        done
        if [[ $MESH_ADDRESSING == rank ]]; then
            # one MPI address per rank, on data0: a veth with both ends in the rank's namespace,
            # standing in for a dummy device (this kernel has none; OpenMPI ignores addresses on lo)
            for ((i = 0; i < RANKS; i++)); do
                ni=$(rank_ns "$i")
                RUN ip -n "$ni" link add data0 type veth peer name data0p || die_setup "data0 in $ni failed"
                RUN ip -n "$ni" link set data0p up || die_setup "data0p up in $ni failed"
                RUN ip -n "$ni" link set data0 up || die_setup "data0 up in $ni failed"
                RUN ip -n "$ni" addr add "$(data_addr "$i")/32" dev data0 || die_setup "data address in $ni failed"
                for ((j = 0; j < RANKS; j++)); do
                    ((j == i)) && continue
                    RUN ip -n "$ni" route add "$(data_addr "$j")/32" via "$(mesh_addr "$j" "$i")" dev "p$j" ||
                        die_setup "route in $ni failed"
                done
            done
        fi
        # host routes: every address of peer j (on its links to third ranks k) through the
        # direct link to j, so that whichever address OpenMPI picks, the bytes take link i-j
        # (needed for "link" addressing; kept for "rank" so that no path can leave the mesh).
        local k batch
        for ((i = 0; i < RANKS; i++)); do
            ni=$(rank_ns "$i")
            batch=""
            for ((j = 0; j < RANKS; j++)); do
                ((j == i)) && continue
                aj=$(mesh_addr "$j" "$i")
                for ((k = 0; k < RANKS; k++)); do
                    ((k == i || k == j)) && continue
                    batch+="route add $(mesh_addr "$j" "$k")/32 via $aj dev p$j"$'\n'
                done
            done
            [[ -z $batch ]] && continue
            if ((DRY)); then
                printf '%s' "$batch" | sed "s|^|ip -n $ni |"
            else
                ((VERBOSE)) && printf '%s' "$batch" | sed "s|^|+ ip -n $ni |" >&2
                local err
                err=$(printf '%s' "$batch" | ip -n "$ni" -batch - 2>&1) ||
                    die_setup "host routes in $ni failed: $err"
            fi
        done
    fi
}

# ---------------------------------------------------------------- main
if ((CLEANUP)); then
    if [[ -z $RANKS && -z $RATE && $SELFTEST -eq 0 && ${#CMD[@]} -eq 0 ]]; then
        cleanup_stale
        exit 0
    fi
fi

validate_args

if ((!DRY)); then
    check_prereqs
fi

trap on_exit EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal HUP 129' HUP

((CLEANUP)) && cleanup_stale

if [[ $TOPO == star || $TOPO == nodes ]]; then DATA_NET=$CTL_NET; else DATA_NET=$MESH_NET; fi
if [[ $TOPO == mesh && $MESH_ADDRESSING == rank ]]; then DATA_NET=$DATA_ADDR_NET; fi

if ((!SELFTEST && !DRY)) && ! command -v -- "${CMD[0]}" >/dev/null 2>&1; then
    echo "$PROG: error: command not found: ${CMD[0]}" >&2
    exit 127
fi

if ((SELFTEST)); then
    if ((DRY)); then
        TMPD="/tmp/$PREFIX.netem.XXXXXX"
        echo "mpicc -O2 -o $TMPD/linkcheck $LINKCHECK_SRC"
    else
        TMPD=$(mktemp -d "/tmp/$PREFIX.netem.XXXXXX") || die_setup "mktemp failed"
        err=$(mpicc -O2 -o "$TMPD/linkcheck" "$LINKCHECK_SRC" 2>&1) ||
            die_setup "building linkcheck failed: $err"
    fi
    CMD=("$TMPD/linkcheck" "${CMD[@]}")
fi

# delay needs netem: probe once, on the loopback of a throwaway namespace of our own
if ((DELAY_US > 0 && !DRY)); then
    ns_add "$PREFIX-probe"
    if ! tc -n "$PREFIX-probe" qdisc add dev lo root netem delay 1ms 2>/dev/null; then
        die_prereq "--delay needs the netem qdisc (sch_netem), which this kernel does not have; use --delay 0ms"
    fi
    ip netns delete "$PREFIX-probe"
fi

desc="$SHAPER burst ${BURST_B}B limit ${LIMIT_B}B"
((PEAK_BPS > 0)) && desc+=" peakrate ${PEAK}x (bucket ${MINBURST_B}B)"
((DELAY_US > 0)) && desc+=", delay ${DELAY_US}us"
if [[ $TOPO == nodes ]]; then
    info "nodes: $NODES x $PER_NODE ranks, $RATE ($RATE_BPS bit/s) per rank link and direction, node uplinks $NODE_RATE ($NODE_RATE_BPS bit/s), $desc; namespaces $PREFIX-*"
else
    info "$TOPO, $RANKS ranks, $RATE ($RATE_BPS bit/s) per link and direction, $desc; namespaces $PREFIX-*"
fi
t_setup=$(date +%s.%N)
build_network
((DRY)) || info "network ready in $(awk -v a="$t_setup" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"

# MCA settings (a user's own --mpirun-arg --mca NAME VALUE replaces ours: mpirun refuses duplicates)
declare -A USER_MCA=()
for ((idx = 0; idx < ${#MPIRUN_EXTRA[@]}; idx++)); do
    case "${MPIRUN_EXTRA[idx]}" in
    --mca | -mca | --gmca | -gmca) USER_MCA[${MPIRUN_EXTRA[idx + 1]:-}]=1 ;;
    esac
done
MCA=()
add_mca() { [[ -n ${USER_MCA[$1]:-} ]] || MCA+=(--mca "$1" "$2"); }
add_mca pml ob1                 # not UCX: it would take shared memory past the shaped links
add_mca btl tcp,self            # TCP only: no vader shared memory between ranks
add_mca osc '^ucx,sm'           # one-sided traffic over the pml too
add_mca coll '^sm'
add_mca btl_tcp_if_include "$DATA_NET"
add_mca oob_tcp_if_include "$CTL_NET"
# no emulated RDMA put: with it, the rest of a long message goes as ONE fragment of up to 2 GB,
# and control messages queued behind it serialise the two directions of an exchange (measured:
# 0<->1 took 2x the one-way time in about half the runs); plain send/recv fragments interleave
add_mca btl_tcp_flags send,inplace,need-ack,need-csum
# poll politely: busy-polling ranks starve the kernel's packet processing on 2 cores (mpirun
# sets this itself only when ranks > cores; measured: 2 ranks got ~2/3 of the duplex rate)
add_mca mpi_yield_when_idle 1

NODE_ENV=()
((PER_NODE > 0)) && NODE_ENV=(-x "FLASHRING_RANKS_PER_NODE=$PER_NODE")
MPIRUN=(mpirun -np "$RANKS" --oversubscribe --allow-run-as-root --bind-to none "${MCA[@]}"
    -x PMIX_MCA_ptl_tcp_remote_connections=1 -x "PMIX_MCA_ptl_tcp_if_include=$CTL_NET"
    -x "FRN_NETEM_PREFIX=$PREFIX"
    "${NODE_ENV[@]}" "${MPIRUN_EXTRA[@]}" "$RANK_EXEC" "${CMD[@]}")
# the PMIx server (mpirun) itself needs the same settings in its environment
LAUNCH=(ip netns exec "$HUB" env PMIX_MCA_ptl_tcp_remote_connections=1 "PMIX_MCA_ptl_tcp_if_include=$CTL_NET"
    "FRN_NETEM_PREFIX=$PREFIX" "${MPIRUN[@]}")

if ((DRY)); then
    line=$(printf '%q ' "${LAUNCH[@]}")
    echo "${line% }"
    echo "# teardown:"
    for ((idx = ${#CREATED_NS[@]} - 1; idx >= 0; idx--)); do echo "ip netns delete ${CREATED_NS[idx]}"; done
    CREATED_NS=()
    TMPD=""
    trap - EXIT
    exit 0
fi

((VERBOSE)) && { printf '+ '; printf '%q ' "${LAUNCH[@]}"; echo; } >&2
# In the background so that our INT/TERM traps run at once (bash defers traps while it waits
# for a foreground child); stdin is passed on explicitly (a background job would get /dev/null).
"${LAUNCH[@]}" <&0 &
MPIRUN_PID=$!
wait "$MPIRUN_PID"
rc=$?
MPIRUN_PID=""
exit $rc

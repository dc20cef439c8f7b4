#!/bin/sh
# Per-rank launcher used by bench/netem/run.sh.
#
# mpirun runs inside the hub namespace and starts this script once per rank; the script
# looks up the rank's own network namespace from its world rank and execs the real
# command inside it, keeping the environment, working directory and stdio that mpirun
# gave it (so output forwarding and exit statuses work as usual).
#
# Needs FRN_NETEM_PREFIX (set by run.sh with `mpirun -x`), e.g. frn12345, so that rank r
# runs in namespace ${FRN_NETEM_PREFIX}-r<r>.
if [ -z "${FRN_NETEM_PREFIX:-}" ]; then
    echo "rank-exec.sh: FRN_NETEM_PREFIX is not set (run this through bench/netem/run.sh)" >&2
    exit 97
fi
r="${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-}}"
if [ -z "$r" ]; then
    echo "rank-exec.sh: neither OMPI_COMM_WORLD_RANK nor PMIX_RANK is set (not started by mpirun?)" >&2
    exit 97
fi
exec ip netns exec "${FRN_NETEM_PREFIX}-r${r}" "$@"

/*
 * linkcheck: a small MPI bandwidth checker for the emulated links of bench/netem/run.sh.
 *
 * Measurements (each with one message of --bytes, default 16 MiB, repeated --iters times
 * after --warmup untimed rounds; the median is reported):
 *   oneway  rank 0 -> rank 1, one direction only
 *   bidir   rank 0 <-> rank 1, both directions at once (full duplex?)
 *   fanout  rank 1 -> ranks 0 and 2 at once (needs >= 3 ranks). On a star both sends share
 *           rank 1's single uplink (~2x the oneway time); on a mesh they use two links in
 *           parallel (~1x the oneway time, if the CPU keeps up).
 *   fanin   ranks 0 and 2 -> rank 1 at once (needs >= 3 ranks): the same for the downlink.
 *   idle    rank 0 -> rank 1, --idle-bytes (default 1 MiB) after both ranks slept --idle-ms
 *           (default 100): shows how much a message sent after an idle period gains from the
 *           token bucket's burst (tokens pile up while the link is idle). idle_speedup in the
 *           summary is idle MBps / oneway MBps; ~1 means the burst does not distort.
 *   incast  with --incast: every rank except rank 1 sends to rank 1 at once (star: N-1 flows
 *           share rank 1's downlink, ~(N-1)x the oneway time; checks that queue overflow
 *           does not cause retransmission stalls).
 *   ring    (>= 3 ranks; --no-ring skips ring and ring2) every rank sends to rank+1 and
 *           receives from rank-1 at once (a ring all-reduce step; star and mesh both ~1x
 *           oneway, if the CPU keeps up with N streams at once: ring_ratio in the summary).
 *   ring2   every rank sends to both neighbours and receives from both at once
 *           (a bidirectional ring step; star ~2x oneway, mesh ~1x).
 *   pair    with --pairs: every pair i < j, i -> j, one at a time (checks that every link
 *           is shaped; useful for mesh, where each pair has its own link).
 *
 * Output (rank 0, stdout): one line per measurement, all `key=value` after the leading word
 * `linkcheck`, so that scripts can parse it, e.g.
 *   linkcheck test=oneway src=0 dst=1 bytes=16777216 iters=5 ms=135.9 ms_min=135.1 ms_max=137.0 MBps=123.5
 * MBps is 10^6 bytes per second of payload. `ms` is the time from a barrier until the
 * receiver(s) have the whole message (the sender waits for a 1-byte acknowledgement, so one
 * small round trip is included). For bidir, fanout and fanin, MBps is per stream and
 * MBps_total the sum of the streams. The last line is
 *   linkcheck test=summary ... fanout_ratio=<fanout ms / oneway ms> topology_guess=star|mesh|unknown
 * where topology_guess is star if fanout_ratio >= 1.6, mesh if <= 1.4 (unreliable once the
 * CPU, not the link, is the limit: see bench/netem/README.md).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { TAG_DATA = 11, TAG_ACK = 12 };

static int g_rank, g_size;

static void usage(void) {
  if (g_rank == 0)
    fprintf(stderr,
            "usage: linkcheck [--bytes N[K|M|G]] [--iters N] [--warmup N] [--pairs] [--incast] [--no-ring]\n"
            "                 [--idle-bytes N[K|M|G]] [--idle-ms MS]\n"
            "  --bytes   message size (default 16M = 16 MiB)\n"
            "  --iters   timed repetitions per measurement, median reported (default 5)\n"
            "  --warmup  untimed repetitions first (default 1)\n"
            "  --pairs   also time every pair i<j one way, one pair at a time\n"
            "  --incast  also time all ranks but 1 sending to rank 1 at once (>= 3 ranks)\n"
            "  --no-ring skip the ring steps: all ranks send to rank+1 at once (ring), and to\n"
            "            both neighbours at once (ring2) (>= 3 ranks; on by default)\n"
            "  --idle-bytes, --idle-ms  the idle test: message size (default 1M) and idle\n"
            "            time before it (default 100 ms); --idle-bytes 0 skips it\n");
}

static long long parse_size(const char *s) {
  char *end = NULL;
  double v = strtod(s, &end);
  if (end == s || v <= 0) return -1;
  long long mul = 1;
  if (*end == 'k' || *end == 'K')
    mul = 1LL << 10, end++;
  else if (*end == 'm' || *end == 'M')
    mul = 1LL << 20, end++;
  else if (*end == 'g' || *end == 'G')
    mul = 1LL << 30, end++;
  if (*end == 'i' || *end == 'I') end++;
  if (*end == 'b' || *end == 'B') end++;
  if (*end != '\0') return -1;
  return (long long)(v * (double)mul);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

struct stats {
  double med, min, max;
};

static struct stats summarize(double *t, int n) {
  struct stats s;
  qsort(t, (size_t)n, sizeof(double), cmp_double);
  s.min = t[0];
  s.max = t[n - 1];
  s.med = (n % 2) ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
  return s;
}

/* Receive one message from src and acknowledge it. */
static void recv_and_ack(char *buf, int count, int src) {
  char ack = 1;
  MPI_Recv(buf, count, MPI_BYTE, src, TAG_DATA, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  MPI_Send(&ack, 1, MPI_BYTE, src, TAG_ACK, MPI_COMM_WORLD);
}

/* One timed round of a measurement: every rank calls it; returns the max elapsed time over
 * all ranks (non-participants contribute 0) on every rank. */
typedef void (*round_fn)(char *sbuf, char *rbuf, char *rbuf2, int count, int a, int b);

static void round_oneway(char *sbuf, char *rbuf, char *rbuf2, int count, int src, int dst) {
  (void)rbuf2;
  char ack;
  if (g_rank == src) {
    MPI_Send(sbuf, count, MPI_BYTE, dst, TAG_DATA, MPI_COMM_WORLD);
    MPI_Recv(&ack, 1, MPI_BYTE, dst, TAG_ACK, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  } else if (g_rank == dst) {
    recv_and_ack(rbuf, count, src);
  }
}

static void round_bidir(char *sbuf, char *rbuf, char *rbuf2, int count, int a, int b) {
  (void)rbuf2;
  if (g_rank == a || g_rank == b) {
    int peer = (g_rank == a) ? b : a;
    MPI_Request req[2];
    MPI_Irecv(rbuf, count, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD, &req[0]);
    MPI_Isend(sbuf, count, MPI_BYTE, peer, TAG_DATA, MPI_COMM_WORLD, &req[1]);
    MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
  }
}

/* fanout: rank 1 sends to ranks 0 and 2 at once */
static void round_fanout(char *sbuf, char *rbuf, char *rbuf2, int count, int src, int unused) {
  (void)rbuf2;
  (void)unused;
  int d0 = 0, d1 = 2;
  if (g_rank == src) {
    MPI_Request req[4];
    char ack[2];
    MPI_Irecv(&ack[0], 1, MPI_BYTE, d0, TAG_ACK, MPI_COMM_WORLD, &req[0]);
    MPI_Irecv(&ack[1], 1, MPI_BYTE, d1, TAG_ACK, MPI_COMM_WORLD, &req[1]);
    MPI_Isend(sbuf, count, MPI_BYTE, d0, TAG_DATA, MPI_COMM_WORLD, &req[2]);
    MPI_Isend(sbuf, count, MPI_BYTE, d1, TAG_DATA, MPI_COMM_WORLD, &req[3]);
    MPI_Waitall(4, req, MPI_STATUSES_IGNORE);
  } else if (g_rank == d0 || g_rank == d1) {
    recv_and_ack(rbuf, count, src);
  }
}

/* fanin: ranks 0 and 2 send to rank 1 at once */
static void round_fanin(char *sbuf, char *rbuf, char *rbuf2, int count, int dst, int unused) {
  (void)unused;
  int s0 = 0, s1 = 2;
  char ack = 1;
  if (g_rank == dst) {
    MPI_Request req[2];
    MPI_Irecv(rbuf, count, MPI_BYTE, s0, TAG_DATA, MPI_COMM_WORLD, &req[0]);
    MPI_Irecv(rbuf2, count, MPI_BYTE, s1, TAG_DATA, MPI_COMM_WORLD, &req[1]);
    MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
    MPI_Send(&ack, 1, MPI_BYTE, s0, TAG_ACK, MPI_COMM_WORLD);
    MPI_Send(&ack, 1, MPI_BYTE, s1, TAG_ACK, MPI_COMM_WORLD);
  } else if (g_rank == s0 || g_rank == s1) {
    MPI_Send(sbuf, count, MPI_BYTE, dst, TAG_DATA, MPI_COMM_WORLD);
    MPI_Recv(&ack, 1, MPI_BYTE, dst, TAG_ACK, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  }
}

static int g_idle_ms = 100;

/* idle: both ranks sleep (link idle, token bucket refills), then src -> dst */
static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0)
    ;
}

static struct stats measure_idle(char *sbuf, char *rbuf, int count, int iters) {
  double *t = malloc(sizeof(double) * (size_t)iters);
  for (int it = 0; it < iters; it++) {
    MPI_Barrier(MPI_COMM_WORLD);
    sleep_ms(g_idle_ms);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    round_oneway(sbuf, rbuf, NULL, count, 0, 1);
    double local = MPI_Wtime() - t0, mx = 0.0;
    MPI_Allreduce(&local, &mx, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    t[it] = mx;
  }
  struct stats s = summarize(t, iters);
  free(t);
  return s;
}

/* ring: every rank sends to rank+1 (and with both = 1 also to rank-1) at once */
static void round_ring(char *sbuf, char *rbuf, char *rbuf2, int count, int both, int unused) {
  (void)unused;
  int next = (g_rank + 1) % g_size, prev = (g_rank + g_size - 1) % g_size;
  MPI_Request req[4];
  int n = 0;
  MPI_Irecv(rbuf, count, MPI_BYTE, prev, TAG_DATA, MPI_COMM_WORLD, &req[n++]);
  if (both) MPI_Irecv(rbuf2, count, MPI_BYTE, next, TAG_DATA, MPI_COMM_WORLD, &req[n++]);
  MPI_Isend(sbuf, count, MPI_BYTE, next, TAG_DATA, MPI_COMM_WORLD, &req[n++]);
  if (both) MPI_Isend(sbuf, count, MPI_BYTE, prev, TAG_DATA, MPI_COMM_WORLD, &req[n++]);
  MPI_Waitall(n, req, MPI_STATUSES_IGNORE);
}

/* incast: every rank but dst sends to dst at once */
static char *g_incast_buf; /* (size-1) * count bytes on dst */

static void round_incast(char *sbuf, char *rbuf, char *rbuf2, int count, int dst, int unused) {
  (void)rbuf;
  (void)rbuf2;
  (void)unused;
  char ack = 1;
  if (g_rank == dst) {
    MPI_Request *req = malloc(sizeof(MPI_Request) * (size_t)g_size);
    int n = 0;
    for (int r = 0; r < g_size; r++)
      if (r != dst) {
        MPI_Irecv(g_incast_buf + (size_t)n * (size_t)count, count, MPI_BYTE, r, TAG_DATA, MPI_COMM_WORLD, &req[n]);
        n++;
      }
    MPI_Waitall(n, req, MPI_STATUSES_IGNORE);
    for (int r = 0; r < g_size; r++)
      if (r != dst) MPI_Send(&ack, 1, MPI_BYTE, r, TAG_ACK, MPI_COMM_WORLD);
    free(req);
  } else {
    MPI_Send(sbuf, count, MPI_BYTE, dst, TAG_DATA, MPI_COMM_WORLD);
    MPI_Recv(&ack, 1, MPI_BYTE, dst, TAG_ACK, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  }
}

static struct stats measure(round_fn fn, char *sbuf, char *rbuf, char *rbuf2, int count, int a, int b, int warmup,
                            int iters) {
  double *t = malloc(sizeof(double) * (size_t)iters);
  for (int it = 0; it < warmup + iters; it++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    fn(sbuf, rbuf, rbuf2, count, a, b);
    double local = MPI_Wtime() - t0, mx = 0.0;
    /* ranks that took no part report 0 */
    MPI_Allreduce(&local, &mx, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (it >= warmup) t[it - warmup] = mx;
  }
  struct stats s = summarize(t, iters);
  free(t);
  return s;
}

static double mbps(long long bytes, double sec) { return sec > 0 ? (double)bytes / sec / 1e6 : 0.0; }

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);

  long long bytes = 16LL << 20;
  long long idle_bytes = 1LL << 20;
  int iters = 5, warmup = 1, pairs = 0, incast = 0, ring = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--bytes") && i + 1 < argc) {
      bytes = parse_size(argv[++i]);
    } else if (!strcmp(argv[i], "--iters") && i + 1 < argc) {
      iters = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--warmup") && i + 1 < argc) {
      warmup = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--idle-bytes") && i + 1 < argc) {
      idle_bytes = !strcmp(argv[i + 1], "0") ? 0 : parse_size(argv[i + 1]);
      i++;
    } else if (!strcmp(argv[i], "--idle-ms") && i + 1 < argc) {
      g_idle_ms = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--ring")) {
      ring = 1;
    } else if (!strcmp(argv[i], "--no-ring")) {
      ring = 0;
    } else if (!strcmp(argv[i], "--incast")) {
      incast = 1;
    } else if (!strcmp(argv[i], "--pairs")) {
      pairs = 1;
    } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage();
      MPI_Finalize();
      return 0;
    } else {
      if (g_rank == 0) fprintf(stderr, "linkcheck: unknown or incomplete argument '%s'\n", argv[i]);
      usage();
      MPI_Finalize();
      return 2;
    }
  }
  if (bytes <= 0 || bytes > 0x7fffffffLL || iters < 1 || warmup < 0 || idle_bytes < 0 || idle_bytes > bytes ||
      g_idle_ms < 0) {
    if (g_rank == 0)
      fprintf(stderr,
              "linkcheck: bad --bytes (1..2^31-1), --iters (>=1), --warmup (>=0), "
              "--idle-bytes (0..--bytes) or --idle-ms (>=0)\n");
    MPI_Finalize();
    return 2;
  }
  if (g_size < 2) {
    if (g_rank == 0) fprintf(stderr, "linkcheck: needs at least 2 ranks\n");
    MPI_Finalize();
    return 2;
  }
  int count = (int)bytes;
  char *sbuf = malloc((size_t)count), *rbuf = malloc((size_t)count), *rbuf2 = malloc((size_t)count);
  if (!sbuf || !rbuf || !rbuf2) {
    fprintf(stderr, "linkcheck: rank %d: out of memory\n", g_rank);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  for (int i = 0; i < count; i++) sbuf[i] = (char)(i * 131 + g_rank);
  memset(rbuf, 0, (size_t)count);
  memset(rbuf2, 0, (size_t)count);

  if (g_rank == 0) {
    printf("linkcheck test=config ranks=%d bytes=%lld iters=%d warmup=%d MB=1e6\n", g_size, bytes, iters, warmup);
    fflush(stdout);
  }

  struct stats one = measure(round_oneway, sbuf, rbuf, rbuf2, count, 0, 1, warmup, iters);
  if (g_rank == 0)
    printf(
        "linkcheck test=oneway src=0 dst=1 bytes=%lld iters=%d ms=%.1f ms_min=%.1f "
        "ms_max=%.1f MBps=%.1f\n",
        bytes, iters, one.med * 1e3, one.min * 1e3, one.max * 1e3, mbps(bytes, one.med));
  fflush(stdout);

  struct stats bi = measure(round_bidir, sbuf, rbuf, rbuf2, count, 0, 1, warmup, iters);
  if (g_rank == 0)
    printf(
        "linkcheck test=bidir a=0 b=1 bytes=%lld iters=%d ms=%.1f ms_min=%.1f ms_max=%.1f "
        "MBps=%.1f MBps_total=%.1f\n",
        bytes, iters, bi.med * 1e3, bi.min * 1e3, bi.max * 1e3, mbps(bytes, bi.med), mbps(2 * bytes, bi.med));
  fflush(stdout);

  struct stats fo = {0, 0, 0}, fi = {0, 0, 0};
  if (g_size >= 3) {
    fo = measure(round_fanout, sbuf, rbuf, rbuf2, count, 1, -1, warmup, iters);
    if (g_rank == 0)
      printf(
          "linkcheck test=fanout src=1 dst=0,2 bytes=%lld iters=%d ms=%.1f ms_min=%.1f "
          "ms_max=%.1f MBps=%.1f MBps_total=%.1f\n",
          bytes, iters, fo.med * 1e3, fo.min * 1e3, fo.max * 1e3, mbps(bytes, fo.med), mbps(2 * bytes, fo.med));
    fflush(stdout);
    fi = measure(round_fanin, sbuf, rbuf, rbuf2, count, 1, -1, warmup, iters);
    if (g_rank == 0)
      printf(
          "linkcheck test=fanin src=0,2 dst=1 bytes=%lld iters=%d ms=%.1f ms_min=%.1f "
          "ms_max=%.1f MBps=%.1f MBps_total=%.1f\n",
          bytes, iters, fi.med * 1e3, fi.min * 1e3, fi.max * 1e3, mbps(bytes, fi.med), mbps(2 * bytes, fi.med));
    fflush(stdout);
  }

  struct stats idle = {0, 0, 0};
  if (idle_bytes > 0) {
    idle = measure_idle(sbuf, rbuf, (int)idle_bytes, iters);
    if (g_rank == 0)
      printf(
          "linkcheck test=idle src=0 dst=1 bytes=%lld idle_ms=%d iters=%d ms=%.2f ms_min=%.2f "
          "ms_max=%.2f MBps=%.1f\n",
          idle_bytes, g_idle_ms, iters, idle.med * 1e3, idle.min * 1e3, idle.max * 1e3, mbps(idle_bytes, idle.med));
    fflush(stdout);
  }

  struct stats r1 = {0, 0, 0}, r2 = {0, 0, 0};
  if (ring && g_size >= 3) {
    r1 = measure(round_ring, sbuf, rbuf, rbuf2, count, 0, -1, warmup, iters);
    if (g_rank == 0)
      printf(
          "linkcheck test=ring streams=%d bytes=%lld iters=%d ms=%.1f ms_min=%.1f ms_max=%.1f "
          "MBps=%.1f MBps_total=%.1f\n",
          g_size, bytes, iters, r1.med * 1e3, r1.min * 1e3, r1.max * 1e3, mbps(bytes, r1.med),
          mbps((long long)g_size * bytes, r1.med));
    fflush(stdout);
    r2 = measure(round_ring, sbuf, rbuf, rbuf2, count, 1, -1, warmup, iters);
    if (g_rank == 0)
      printf(
          "linkcheck test=ring2 streams=%d bytes=%lld iters=%d ms=%.1f ms_min=%.1f ms_max=%.1f "
          "MBps=%.1f MBps_total=%.1f\n",
          2 * g_size, bytes, iters, r2.med * 1e3, r2.min * 1e3, r2.max * 1e3, mbps(bytes, r2.med),
          mbps(2LL * g_size * bytes, r2.med));
    fflush(stdout);
  }

  if (incast && g_size >= 3) {
    if (g_rank == 1) {
      g_incast_buf = malloc((size_t)(g_size - 1) * (size_t)count);
      if (!g_incast_buf) {
        fprintf(stderr, "linkcheck: rank 1: out of memory for --incast\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
    }
    struct stats ic = measure(round_incast, sbuf, rbuf, rbuf2, count, 1, -1, warmup, iters);
    if (g_rank == 0)
      printf(
          "linkcheck test=incast src=all-but-1 dst=1 flows=%d bytes=%lld iters=%d ms=%.1f "
          "ms_min=%.1f ms_max=%.1f MBps=%.1f MBps_total=%.1f\n",
          g_size - 1, bytes, iters, ic.med * 1e3, ic.min * 1e3, ic.max * 1e3, mbps(bytes, ic.med),
          mbps((long long)(g_size - 1) * bytes, ic.med));
    fflush(stdout);
    free(g_incast_buf);
    g_incast_buf = NULL;
  }

  if (pairs) {
    for (int i = 0; i < g_size; i++)
      for (int j = i + 1; j < g_size; j++) {
        struct stats p = measure(round_oneway, sbuf, rbuf, rbuf2, count, i, j, 1, 1);
        if (g_rank == 0)
          printf("linkcheck test=pair src=%d dst=%d bytes=%lld ms=%.1f MBps=%.1f\n", i, j, bytes, p.med * 1e3,
                 mbps(bytes, p.med));
        fflush(stdout);
      }
  }

  if (g_rank == 0) {
    char idle_str[64] = "";
    char ring_str[64] = "";
    if (idle_bytes > 0)
      snprintf(idle_str, sizeof idle_str, " idle_speedup=%.2f", mbps(idle_bytes, idle.med) / mbps(bytes, one.med));
    if (ring && g_size >= 3)
      snprintf(ring_str, sizeof ring_str, " ring_ratio=%.2f ring2_ratio=%.2f", r1.med / one.med, r2.med / one.med);
    if (g_size >= 3) {
      double fo_ratio = fo.med / one.med, fi_ratio = fi.med / one.med;
      const char *guess = fo_ratio >= 1.6 ? "star" : (fo_ratio <= 1.4 ? "mesh" : "unknown");
      printf(
          "linkcheck test=summary ranks=%d oneway_MBps=%.1f bidir_MBps=%.1f "
          "duplex_ratio=%.2f fanout_ratio=%.2f fanin_ratio=%.2f%s%s topology_guess=%s\n",
          g_size, mbps(bytes, one.med), mbps(bytes, bi.med), bi.med / one.med, fo_ratio, fi_ratio, ring_str, idle_str,
          guess);
    } else {
      printf(
          "linkcheck test=summary ranks=%d oneway_MBps=%.1f bidir_MBps=%.1f "
          "duplex_ratio=%.2f%s topology_guess=unknown\n",
          g_size, mbps(bytes, one.med), mbps(bytes, bi.med), bi.med / one.med, idle_str);
    }
    fflush(stdout);
  }

  free(sbuf);
  free(rbuf);
  free(rbuf2);
  MPI_Finalize();
  return 0;
}

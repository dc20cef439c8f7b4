// "This machine as calibrated": a simulate profile from measurements on the ranks of a communicator.
//
// Every CPU rate is measured with all ranks running the same kernel at once, one thread each (as the engine runs
// ranks that share a machine), for fixed windows (each rank counts the calls it completes), so ranks that share
// cores (4 MPI ranks on 2 cores) see the share they get when the engine runs them together; per window the
// slowest rank counts, and the median of 5 windows (as benchmarks report medians). Measured:
//   link            CostModel::calibrate: bandwidth and topology of the transport's link (on loopback MPI/TCP
//                   this is the CPU-bound transport, on emulated links the link)
//   GEMMs           sgemm of 512 x 1024 x 1024 (the engine's prefill runs sgemm on dequantized panels)
//   latency         8-byte ping-pongs between ranks 0 and 1, median of 5 runs of 10
//   attention       the block kernel on 512 x 512 x 8 heads x 128, non-causal
//   memory          a 64 MiB copy
//   codecs          per codec (fp32, bf16, int8, int6, int5, int4), the passes of one rank's two-step all-reduce
//                   of 1 Mi values over comm.size() ranks (at least 2): encode the buffer into slices, decode-sum
//                   the received ones, re-encode the owned slice, decode the gathered buffer; the rate is the
//                   traffic that allreduceCost counts for these passes divided by their time
//   sync            every rank runs ~10 ms of sgemm, then a barrier, 8 times: the excess per iteration over the
//                   calls' own (concurrent) time and the barrier's rounds of latency
//   merges          mergeAttention of 1024 rows x 8 heads x 128 (3 passes over (out, lse))
//   transport CPU   every rank sends 4 MiB to the next and receives 4 MiB from the previous at once (median of 5):
//                   seconds per byte sent; and the same bytes as 16 messages of 256 KiB: the excess per message.
//                   Only meaningful where the CPU and not a link is the limit: loopback, or emulated links run
//                   unshaped (bench/simulate_check.sh calibrates under bench/netem/run.sh --rate 100gbit, so the
//                   veth / bridge path's CPU per byte is the one measured)
#include <cblas.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "comm/tags.h"
#include "flashring/attention.h"
#include "flashring/cpu.h"
#include "flashring/quant.h"
#include "flashring/simulate.h"

namespace flashring::sim {

namespace {

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The median of v (v not empty).
double medianOf(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Seconds per call of fn while every rank runs it at once: one untimed call, then 5 windows (each after a
// barrier) of calls for `window` seconds; per window the slowest rank's mean (ranks that share cores slow each
// other down in the same window), and the median window (as the benchmarks report medians: a best window would
// catch a moment the machine's other jobs left free, which a longer benchmark does not get).
template <class F>
double concurrentSeconds(Communicator& comm, F&& fn, double window = 0.06) {
  fn();
  std::vector<double> ws;
  for (int w = 0; w < 5; ++w) {
    barrier(comm);
    const auto t0 = Clock::now();
    int calls = 0;
    do {
      fn();
      ++calls;
    } while (since(t0) < window);
    ws.push_back(allreduceMax(comm, since(t0) / calls));
  }
  return std::max(medianOf(ws), 1e-9);
}

// The codec passes of one rank's two-step all-reduce of M values over N ranks with one codec.
struct CodecPasses {
  size_t M;
  int N;
  int bits;  // 0: exact payload
  Payload payload;
  quant::Config cfg;
  std::vector<float> x, acc, out;
  std::vector<uint8_t> enc;
  size_t slice;

  CodecPasses(size_t m, int n, int b, Payload p) : M(m), N(n), bits(b), payload(p) {
    cfg = quant::Config{b > 0 ? b : 8, 128, false};
    slice = M / static_cast<size_t>(N) / 128 * 128;
    x.resize(M);
    for (size_t i = 0; i < M; ++i) x[i] = static_cast<float>(static_cast<int>(i % 1000) - 500) * 0.01f;
    acc.resize(slice);
    out.resize(M);
    enc.resize(static_cast<size_t>(N) * encoded(slice) + 64);
  }
  size_t encoded(size_t n) const {
    if (bits > 0) return quant::encodedBytes(n, cfg);
    return n * (payload == Payload::BF16 ? 2 : 4);
  }
  void encode(const float* in, size_t n, uint8_t* e) const {
    if (bits > 0)
      quant::quantize(in, n, cfg, e);
    else if (payload == Payload::BF16)
      quant::toBf16(in, n, reinterpret_cast<uint16_t*>(e));
    else
      std::memcpy(e, in, n * 4);
  }
  void decodeAcc(const uint8_t* e, size_t n, float* a) const {
    if (bits > 0) {
      quant::dequantizeAccumulate(e, n, cfg, a);
    } else if (payload == Payload::BF16) {
      quant::fromBf16Accumulate(reinterpret_cast<const uint16_t*>(e), n, a);
    } else {
      const auto* f = reinterpret_cast<const float*>(e);
      for (size_t i = 0; i < n; ++i) a[i] += f[i];
    }
  }
  void decode(const uint8_t* e, size_t n, float* o) const {
    if (bits > 0)
      quant::dequantize(e, n, cfg, o);
    else if (payload == Payload::BF16)
      quant::fromBf16(reinterpret_cast<const uint16_t*>(e), n, o);
    else
      std::memcpy(o, e, n * 4);
  }
  void run() {
    const size_t es = encoded(slice);
    for (int j = 0; j < N; ++j) encode(x.data() + static_cast<size_t>(j) * slice, slice, enc.data() + j * es);
    std::memset(acc.data(), 0, slice * 4);
    for (size_t i = 0; i < slice; ++i) acc[i] += x[i];  // the own slice, exact
    for (int j = 1; j < N; ++j) decodeAcc(enc.data() + j * es, slice, acc.data());
    encode(acc.data(), slice, enc.data());
    for (int j = 0; j < N; ++j) decode(enc.data() + (j == 0 ? 0 : j * es), slice, out.data() + j * slice);
  }
  // The traffic allreduceCost counts for these passes (twoStepTraffic with e1 = e2).
  double traffic() const {
    const double m = static_cast<double>(slice) * N,
                 e = static_cast<double>(encoded(slice)) / static_cast<double>(slice);
    return m * (2 * 4 + 3 * e) + m * e / N;
  }
};

}  // namespace

Profile calibratedProfile(Communicator& comm, double weight_bytes) {
  const int me = comm.rank(), N = comm.size();
  // One thread per rank (kernels and OpenBLAS), as the engine runs ranks that share a machine.
  struct Threads {
    int prev = cpu::threads();
    Threads() { cpu::setThreads(1); }
    ~Threads() { cpu::setThreads(prev); }
  } threads;
  // Link latency, bandwidth, topology (as Auto uses them).
  const CostModel cm = CostModel::calibrate(comm);
  const CostModelParams& cp = cm.params();

  // Latency: 8-byte ping-pongs between ranks 0 and 1, median of 5 runs of 10 (CostModel's single run is noisy on
  // a loaded machine).
  double latency_s = cp.latency_s;
  if (N >= 2) {
    const Tag tag = tags::make(tags::kHelpers, 3);
    char a[8] = {}, b[8] = {};
    std::vector<double> runs;
    for (int rep = 0; rep < 5; ++rep) {
      barrier(comm);
      const auto t0 = Clock::now();
      for (int i = 0; i < 10; ++i) {
        if (me == 0) {
          Request sr = comm.isend(a, 8, 1, tag), rr = comm.irecv(b, 8, 1, tag);
          comm.wait(sr, comm.deadline()), comm.wait(rr, comm.deadline());
        } else if (me == 1) {
          Request rr = comm.irecv(b, 8, 0, tag);
          comm.wait(rr, comm.deadline());
          Request sr = comm.isend(a, 8, 0, tag);
          comm.wait(sr, comm.deadline());
        }
      }
      runs.push_back(allreduceMax(comm, me <= 1 ? since(t0) : 0.0));
    }
    latency_s = medianOf(runs) / 20;
  }
  // GEMMs: sgemm 512 x 1024 x 1024.
  double gemm_flops = 0;
  {
    const int m = 512, n = 1024, k = 1024;
    std::vector<float> a(static_cast<size_t>(m) * k, 0.01f), w(static_cast<size_t>(n) * k, 0.02f),
        y(static_cast<size_t>(m) * n);
    const double s = concurrentSeconds(comm, [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.f, a.data(), k, w.data(), k, 0.f, y.data(), n);
    });
    gemm_flops = 2.0 * m * n * k / s;
  }
  // Synchronisation after compute: every rank runs ~10 ms of sgemm calls, then a barrier; the excess of an
  // iteration over the calls' own time (measured concurrently above) less the barrier's message rounds.
  double sync_s = 0;
  if (N >= 2) {
    const int m = 256, n = 512, k = 512;
    std::vector<float> a(static_cast<size_t>(m) * k, 0.01f), w(static_cast<size_t>(n) * k, 0.02f),
        y(static_cast<size_t>(m) * n);
    auto gemm = [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.f, a.data(), k, w.data(), k, 0.f, y.data(), n);
    };
    const double call = concurrentSeconds(comm, gemm);
    const int calls = std::max(1, static_cast<int>(0.01 / call));
    std::vector<double> runs;
    for (int rep = 0; rep < 5; ++rep) {
      barrier(comm);
      const auto t0 = Clock::now();
      for (int it = 0; it < 8; ++it) {
        for (int c = 0; c < calls; ++c) gemm();
        barrier(comm);
      }
      runs.push_back(allreduceMax(comm, since(t0)) / 8);
    }
    const double best = medianOf(runs);
    const double rounds = std::ceil(std::log2(static_cast<double>(N)));
    sync_s = std::max(0.0, best - calls * call - rounds * latency_s);
  }
  // The block attention kernel: 512 x 512 blocks (a zigzag chunk of 4096 tokens over 4 ranks), 8 heads x 128.
  double kernel_flops = 0;
  {
    constexpr int L = 512;
    const AttentionShape as{1, L, L, 8, 8, 128};
    std::vector<float> q(size_t{L} * 8 * 128, 0.01f), o(q.size()), l(size_t{L} * 8);
    const double s =
        concurrentSeconds(comm, [&] { blockAttention(q.data(), q.data(), q.data(), as, {}, o.data(), l.data()); });
    kernel_flops = 4.0 * L * L * 8 * 128 / s;
  }
  // Memory: a 64 MiB copy (read + write).
  double mem_Bps = 0;
  {
    const size_t bytes = size_t{64} << 20;
    std::vector<char> src(bytes, 1), dst(bytes);
    mem_Bps =
        2.0 * static_cast<double>(bytes) / concurrentSeconds(comm, [&] { std::memcpy(dst.data(), src.data(), bytes); });
  }
  // Codecs: the passes of a two-step all-reduce of 1 Mi values.
  const int cn = std::max(2, N);
  std::vector<std::pair<std::string, double>> rates;
  for (const auto& [name, bits, pl] : {std::tuple{"fp32", 0, Payload::F32}, std::tuple{"bf16", 0, Payload::BF16},
                                       std::tuple{"int8", 8, Payload::F32}, std::tuple{"int6", 6, Payload::F32},
                                       std::tuple{"int5", 5, Payload::F32}, std::tuple{"int4", 4, Payload::F32}}) {
    CodecPasses cps(size_t{1} << 20, cn, bits, pl);
    rates.emplace_back(name, cps.traffic() / concurrentSeconds(comm, [&] { cps.run(); }));
  }
  // Merges: 1024 rows x 8 heads x 128.
  double merge_Bps = 0;
  {
    const int rows = 1024, H = 8, D = 128;
    std::vector<float> o(static_cast<size_t>(rows) * H * D, 0.1f), ob(o.size(), 0.2f), l(rows * H, 0.5f),
        lb(l.size(), 0.4f);
    const double s = concurrentSeconds(comm, [&] {
      std::fill(l.begin(), l.end(), 0.5f);  // keep the lse bounded across calls
      mergeAttention(o.data(), l.data(), ob.data(), lb.data(), rows, H, D);
    });
    merge_Bps = 3.0 * rows * H * (D + 1) * 4 / s;
  }
  // The transport's CPU: a ring exchange of 4 MiB, as one message and as 64.
  double wire_cpu = 0, msg_cpu = 0;
  if (N >= 2) {
    const size_t bytes = size_t{4} << 20, parts = 16;  // 256 KiB messages: MPI's rendezvous, as large chunks
    std::vector<char> a(bytes, 1), b(bytes);
    const Tag tag = tags::make(tags::kHelpers, 2);
    const int to = (me + 1) % N, from = (me + N - 1) % N;
    auto exchange = [&](size_t msgs) {
      const size_t len = bytes / msgs;
      std::vector<Request> rq;
      for (size_t i = 0; i < msgs; ++i) {
        rq.push_back(comm.irecv(b.data() + i * len, len, from, tag));
        rq.push_back(comm.isend(a.data() + i * len, len, to, tag));
      }
      comm.waitAll(rq, comm.deadline());
    };
    auto timed = [&](size_t msgs) {
      std::vector<double> runs;
      for (int i = 0; i < 5; ++i) {
        barrier(comm);
        const auto t0 = Clock::now();
        exchange(msgs);
        runs.push_back(allreduceMax(comm, since(t0)));
      }
      return medianOf(runs);
    };
    exchange(1);
    const double one = timed(1), many = timed(parts);
    wire_cpu = std::max(0.0, one - latency_s) / static_cast<double>(bytes);
    msg_cpu = std::max(0.0, (many - one) / static_cast<double>(parts - 1));
  }

  Profile p;
  p.name = "local";
  p.description = fmt::format(
      "this machine as calibrated: {} ranks, {} link {:.2f} GB/s, {:.0f} us; sgemm {:.1f}, block kernel {:.1f} "
      "GFLOP/s per rank",
      N, topologyName(cp.topology), cp.bandwidth_Bps / 1e9, latency_s * 1e6, gemm_flops / 1e9, kernel_flops / 1e9);
  p.sources =
      "CostModel::calibrate (link), and with every rank at once: sgemm, the block kernel, a memcpy, each codec's "
      "all-reduce passes, mergeAttention, a ring exchange on the transport";
  p.gpus_per_node = N;
  p.nodes = 1;
  p.peak_flops = gemm_flops;
  p.gemm_eff = p.mem_eff = 1;
  p.attn_eff = kernel_flops / gemm_flops;  // peak_flops * attn_eff = the block kernel's rate
  p.mem_Bps = mem_Bps;
  const double phys = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
  p.mem_bytes = phys / N;  // the ranks share this machine's memory
  for (const auto& [k, v] : rates)
    if (k == "int4") p.codec_Bps = v;
  p.codec_rates = rates;
  p.fused_exact_reduce = false;
  p.weight_bytes = weight_bytes;
  p.act_bytes = 4;
  p.intra = {cp.bandwidth_Bps, 1, latency_s, cp.topology};
  p.inter = p.intra;
  p.wire_cpu_s_per_byte = wire_cpu;
  p.msg_cpu_s = msg_cpu;
  p.merge_Bps = merge_Bps;
  p.sync_s = sync_s;
  p.cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  return p;
}

}  // namespace flashring::sim

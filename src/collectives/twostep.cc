// Pipelined two-step all-reduce, with a codec per stage: group-wise quantized (the Flash all-reduce,
// arXiv 2412.04964), or exact bf16 / fp32 payloads (the TwoStep baselines, pipelined the same way so the
// comparison isolates the bytes on the wire).
//
// Per chunk of the buffer: quantize slice j with the reduce-scatter codec and send it to rank j; rank j
// sums the N contributions in fp32 in rank order (its own exactly, the others dequantized), quantizes the
// sum with the all-gather codec and sends it to every rank; every rank, the owner included, decodes the
// same bytes, so all ranks end bitwise identical. Chunks are pipelined: while chunk c is being quantized
// and sent, chunk c-1 is reduced and chunk c-2 decoded, and progress() is called between slices so that
// transports that move data only inside library calls (MPI over TCP) keep the links busy.
//
// Quantized messages are whatever the codec writes for the slice, quant::encodedBytes() long, so the codec's
// options travel with it unchanged: spike reserving (quant::Config::spikes) adds each group's spike section,
// and dequantizeAccumulate is exactly acc + decode per element, which keeps the rank-order sum identical.
//
// Every message starts with a 16-byte header (element count of the whole buffer, chunk index), so a rank
// whose buffer size differs from its peers' is named in the error instead of corrupting a sum.
//
// The schedule touches its buffers only through the verbs of their memory (device_ops.h: encode, decode,
// decode-accumulate, accumulate, zero, header copies), so the same code runs on host memory (the CPU codecs) and
// on a GPU (cuda::deviceOps(), bitwise the same bytes); it synchronizes the verbs' stream before a transport
// reads a message they wrote.
#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "collectives/algorithms.h"
#include "collectives/codec.h"
#include "collectives/common.h"
#include "comm/tags.h"

namespace flashring::detail {

namespace {
// Scratch of the verbs' memory kind for one call (device memory; the host path takes its buffers from the
// workspace).
class OpsScratch {
 public:
  OpsScratch(const DeviceOps& ops, void* stream, size_t bytes)
      : ops_(ops), stream_(stream), p_(ops.allocate(bytes, stream)) {}
  ~OpsScratch() { ops_.release(p_, stream_); }
  OpsScratch(const OpsScratch&) = delete;
  OpsScratch& operator=(const OpsScratch&) = delete;
  void* get() const { return p_; }

 private:
  const DeviceOps& ops_;
  void* stream_;
  void* p_;
};

// error (nullable, data.size() floats): this rank's share of the error of the result. For a slice j sent to
// rank j: the value minus what rank j decodes of it; for its own slice: the fp32 sum minus the decoded
// all-gather value. Summed over the ranks, that is the exact fp32 sum minus the result.
void pipelinedTwoStep(Communicator& comm, std::span<float> data, const Codec& c1, const Codec& c2, size_t chunk_elems,
                      Workspace& ws, AllreduceStats& stats, float* error, const ExecContext& ctx) {
  const DeviceOps& ops = ctx.ops != nullptr ? *ctx.ops : hostDeviceOps();
  void* const stream = ctx.stream;
  const bool host = ops.memory() == MemoryKind::Host;
  const int n_ranks = comm.size(), me = comm.rank();
  const size_t N = static_cast<size_t>(n_ranks);
  const size_t n = data.size();
  const size_t align = c1.kind == Codec::Quant || c2.kind == Codec::Quant
                           ? static_cast<size_t>(std::max(c1.cfg.group_size, c2.cfg.group_size))
                           : kSliceAlign;
  // Chunk length: a multiple of N * align so that slices fall on group boundaries.
  size_t chunk_len = chunk_elems == 0 ? n : chunk_elems;
  chunk_len = std::max<size_t>(N * align, (chunk_len + N * align - 1) / (N * align) * (N * align));
  const size_t n_chunks = n == 0 ? 1 : (n + chunk_len - 1) / chunk_len;

  auto chunkRange = [&](size_t c) { return Range{std::min(n, c * chunk_len), std::min(n, (c + 1) * chunk_len)}; };
  auto slice = [&](size_t c, int j) {
    const Range cr = chunkRange(c);
    const Range r = part(cr.size(), n_ranks, j, align);
    return Range{cr.begin + r.begin, cr.begin + r.end};
  };
  // Message sizes. All chunks but the last are full, so one layout serves every chunk of equal length.
  auto rsBytes = [&](size_t c, int j) { return sizeof(Header) + c1.bytes(slice(c, j).size()); };
  auto agBytes = [&](size_t c, int j) { return sizeof(Header) + c2.bytes(slice(c, j).size()); };

  // Arena per chunk: [rs send to each j][rs recv from each p][ag send][ag recv from each p].
  std::vector<size_t> chunk_off(n_chunks + 1, 0);
  std::vector<size_t> rs_send_off(n_chunks * N), rs_recv_off(n_chunks * N), ag_recv_off(n_chunks * N),
      ag_send_off(n_chunks);
  size_t off = 0, max_slice = 0;
  for (size_t c = 0; c < n_chunks; ++c) {
    chunk_off[c] = off;
    for (int j = 0; j < n_ranks; ++j) {
      rs_send_off[c * N + static_cast<size_t>(j)] = off;
      off += j == me ? 0 : rsBytes(c, j);
    }
    for (int p = 0; p < n_ranks; ++p) {
      rs_recv_off[c * N + static_cast<size_t>(p)] = off;
      off += p == me ? 0 : rsBytes(c, me);
    }
    ag_send_off[c] = off;
    off += agBytes(c, me);
    for (int p = 0; p < n_ranks; ++p) {
      ag_recv_off[c * N + static_cast<size_t>(p)] = off;
      off += p == me ? 0 : agBytes(c, p);
    }
    max_slice = std::max(max_slice, slice(c, me).size());
  }
  Workspace::Frame frame(ws);
  std::unique_ptr<OpsScratch> device_arena;
  std::byte* arena = nullptr;
  float* acc = nullptr;
  if (host) {
    arena = frame.get<std::byte>(off).data();
    acc = frame.get<float>(max_slice).data();
  } else {  // device memory from the verbs, one allocation: the messages, then the accumulator (16-byte aligned)
    const size_t acc_off = (off + 15) / 16 * 16;
    device_arena = std::make_unique<OpsScratch>(ops, stream, acc_off + max_slice * sizeof(float));
    arena = static_cast<std::byte*>(device_arena->get());
    acc = reinterpret_cast<float*>(arena + acc_off);
  }
  std::vector<Request> rs_recv(n_chunks * N), rs_send(n_chunks * N), ag_recv(n_chunks * N), ag_send(n_chunks * N);

  auto writeHeader = [&](std::byte* p, size_t c, const Codec& codec) {
    const Header h{n, static_cast<uint64_t>(codec.tag()) << 32 | c};
    ops.fromHost(p, &h, sizeof h, stream);
  };
  auto checkHeader = [&](const std::byte* p, size_t c, int from, const Codec& codec, const char* stage) {
    Header h;
    ops.toHost(&h, p, sizeof h, stream);
    if ((h.chunk & 0xFFFFFFFFu) == kOneShotChunk)
      throw InvalidArgument(fmt::format("all-reduce: rank {} ran the one-shot all-reduce on {} elements while rank {} "
                                        "runs the two-step on {} elements (every rank must pass the same count and "
                                        "algorithm; Auto chooses from the count)",
                                        from, h.count, me, n),
                            me);
    if (h.count != n || (h.chunk & 0xFFFFFFFFu) != c)
      throw InvalidArgument(fmt::format("all-reduce: rank {} has {} elements but rank {} has {} (chunk {} vs {})", me,
                                        n, from, h.count, c, h.chunk & 0xFFFFFFFFu),
                            me);
    if (h.chunk >> 32 != codec.tag())
      throw InvalidArgument(fmt::format("all-reduce: rank {} sent a {} message encoded differently from this rank's {} "
                                        "(every rank must use the same algorithm, bits, group size, spikes and "
                                        "rotate)",
                                        from, stage, codec.name()),
                            me);
  };
  auto waitOne = [&](Request& r) {
    Stopwatch w(stats.wait_s);
    comm.wait(r, comm.deadline());
  };

  auto post = [&](size_t c) {
    const Tag t1 = tags::make(tags::kTwoStepScatter, static_cast<int>(c)),
              t2 = tags::make(tags::kTwoStepGather, static_cast<int>(c));
    for (int p = 0; p < n_ranks; ++p) {
      if (p == me) continue;
      const size_t k = c * N + static_cast<size_t>(p);
      rs_recv[k] = comm.irecv(arena + rs_recv_off[k], rsBytes(c, me), p, t1);
      ag_recv[k] = comm.irecv(arena + ag_recv_off[k], agBytes(c, p), p, t2);
    }
    for (int i = 1; i < n_ranks; ++i) {  // start with the next rank so that not every rank hits rank 0 first
      const int j = (me + i) % n_ranks;
      const size_t k = c * N + static_cast<size_t>(j);
      std::byte* buf = arena + rs_send_off[k];
      const Range r = slice(c, j);
      {
        Stopwatch w(stats.codec_s);
        writeHeader(buf, c, c1);
        ops.encode(c1.wire(), data.data() + r.begin, r.size(), buf + sizeof(Header), stream);
        if (error != nullptr) {  // what this rank meant minus what rank j will decode (host memory only)
          c1.decode(buf + sizeof(Header), r.size(), error + r.begin);
          storeError(data.data() + r.begin, error + r.begin, r.size(), error + r.begin);
        }
        ops.synchronize(stream);
      }
      rs_send[k] = comm.isend(buf, rsBytes(c, j), j, t1);
      comm.progress();
    }
  };

  auto reduce = [&](size_t c) {
    const Tag t2 = tags::make(tags::kTwoStepGather, static_cast<int>(c));
    const Range mine = slice(c, me);
    const size_t m = mine.size();
    ops.zero(acc, m, stream);
    for (int p = 0; p < n_ranks; ++p) {  // fixed rank order: identical rounding wherever it runs
      if (p == me) {
        Stopwatch w(stats.codec_s);
        ops.accumulate(acc, data.data() + mine.begin, m, stream);
        continue;
      }
      const size_t k = c * N + static_cast<size_t>(p);
      waitOne(rs_recv[k]);
      Stopwatch w(stats.codec_s);
      checkHeader(arena + rs_recv_off[k], c, p, c1, "reduce-scatter");
      ops.decodeAccumulate(c1.wire(), arena + rs_recv_off[k] + sizeof(Header), m, acc, stream);
    }
    std::byte* buf = arena + ag_send_off[c];
    {
      Stopwatch w(stats.codec_s);
      writeHeader(buf, c, c2);
      ops.encode(c2.wire(), acc, m, buf + sizeof(Header), stream);
      // The owner keeps the decoded bytes it sends (replica consistency).
      ops.decode(c2.wire(), buf + sizeof(Header), m, data.data() + mine.begin, stream);
      if (error != nullptr) storeError(acc, data.data() + mine.begin, m, error + mine.begin);
      ops.synchronize(stream);
    }
    for (int i = 1; i < n_ranks; ++i) {
      const int p = (me + i) % n_ranks;
      ag_send[c * N + static_cast<size_t>(p)] = comm.isend(buf, agBytes(c, me), p, t2);
    }
    comm.progress();
  };

  auto finish = [&](size_t c) {
    for (int i = 1; i < n_ranks; ++i) {
      const int p = (me + n_ranks - i) % n_ranks;
      const size_t k = c * N + static_cast<size_t>(p);
      waitOne(ag_recv[k]);
      Stopwatch w(stats.codec_s);
      checkHeader(arena + ag_recv_off[k], c, p, c2, "all-gather");
      const Range r = slice(c, p);
      ops.decode(c2.wire(), arena + ag_recv_off[k] + sizeof(Header), r.size(), data.data() + r.begin, stream);
    }
  };

  for (size_t step = 0; step < n_chunks + 2; ++step) {
    if (step < n_chunks) post(step);
    if (step >= 1 && step - 1 < n_chunks) reduce(step - 1);
    if (step >= 2) finish(step - 2);
  }
  Stopwatch w(stats.wait_s);
  comm.waitAll(rs_send, comm.deadline());
  comm.waitAll(ag_send, comm.deadline());
  ops.synchronize(stream);  // the last decodes, before the arena goes and the caller reads data
}

}  // namespace

void quantizedAllreduce(Communicator& comm, std::span<float> data, const AllreduceOptions& opt, Workspace& ws,
                        AllreduceStats& stats, float* error, const ExecContext& ctx) {
  pipelinedTwoStep(comm, data, Codec{Codec::Quant, opt.reduce_scatter}, Codec{Codec::Quant, opt.all_gather},
                   opt.chunk_elems, ws, stats, error, ctx);
}

void twoStepAllreduce(Communicator& comm, std::span<float> data, Payload payload, size_t chunk_elems, Workspace& ws,
                      AllreduceStats& stats, float* error, const ExecContext& ctx) {
  const Codec c{payload == Payload::BF16 ? Codec::Bf16 : Codec::F32, {}};
  pipelinedTwoStep(comm, data, c, c, chunk_elems, ws, stats, error, ctx);
}

}  // namespace flashring::detail

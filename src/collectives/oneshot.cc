// One-shot all-reduce for small buffers: one message round instead of the two-step's two.
//
// Every rank encodes its whole buffer once with the codec (the two-step's reduce-scatter Codec, so the
// bytes are exactly what that stage would send for the same values) and sends the same bytes to every
// other rank; then every rank decodes the N encodings, its own from its own encoded bytes, and sums them
// in fp32 in rank order 0..N-1 starting from +0.0. Every rank therefore does the same arithmetic on the same
// bytes and ends bitwise identical, whatever the codec.
//
// Messages are a 16-byte Header (element count, kOneShotChunk and the codec's tag) followed by the encoding,
// posted with the two-step's reduce-scatter tag for chunk 0: a rank with another count or codec is named in
// the error (a size mismatch fails in the transport on both ends, equal sizes on the header), and a rank that
// runs the two-step instead (Auto resolved differently) fails on the first message as well.
#include <fmt/format.h>

#include <cstring>
#include <vector>

#include "collectives/algorithms.h"
#include "collectives/codec.h"
#include "collectives/common.h"
#include "comm/tags.h"

namespace flashring::detail {

void oneShotAllreduce(Communicator& comm, std::span<float> data, const AllreduceOptions& opt, Workspace& ws,
                      AllreduceStats& stats, float* error) {
  const Codec codec = opt.oneshot_quantized ? Codec{Codec::Quant, opt.reduce_scatter}
                                            : Codec{opt.payload == Payload::BF16 ? Codec::Bf16 : Codec::F32, {}};
  const int n_ranks = comm.size(), me = comm.rank();
  const size_t N = static_cast<size_t>(n_ranks), n = data.size();
  const size_t msg = sizeof(Header) + codec.bytes(n);
  // Slot p holds rank p's message; this rank's own encoding sits in slot `me` and is what it sends.
  Workspace::Frame frame(ws);
  std::byte* arena = frame.get<std::byte>(N * msg).data();
  auto slot = [&](int p) { return arena + static_cast<size_t>(p) * msg; };
  const Tag tag = tags::make(tags::kTwoStepScatter, 0);
  std::vector<Request> recv(N), send(N);
  for (int p = 0; p < n_ranks; ++p)
    if (p != me) recv[static_cast<size_t>(p)] = comm.irecv(slot(p), msg, p, tag);

  std::byte* own = slot(me);
  {
    Stopwatch w(stats.codec_s);
    const Header h{n, static_cast<uint64_t>(codec.tag()) << 32 | kOneShotChunk};
    std::memcpy(own, &h, sizeof h);
    codec.encode(data.data(), n, own + sizeof(Header));
    if (error != nullptr) {  // what this rank meant minus what every rank decodes of it
      codec.decode(own + sizeof(Header), n, error);
      storeError(data.data(), error, n, error);
    }
  }
  for (int i = 1; i < n_ranks; ++i) {  // start with the next rank so that not every rank hits rank 0 first
    const int j = (me + i) % n_ranks;
    send[static_cast<size_t>(j)] = comm.isend(own, msg, j, tag);
    comm.progress();
  }

  auto checkHeader = [&](int from) {
    Header h;
    std::memcpy(&h, slot(from), sizeof h);
    if ((h.chunk & 0xFFFFFFFFu) != kOneShotChunk)
      throw InvalidArgument(fmt::format("all-reduce: rank {} runs the two-step on {} elements while rank {} runs the "
                                        "one-shot on {} elements (every rank must pass the same count and algorithm; "
                                        "Auto chooses from the count)",
                                        from, h.count, me, n),
                            me);
    if (h.count != n)
      throw InvalidArgument(
          fmt::format("all-reduce: rank {} has {} elements but rank {} has {} (one-shot)", me, n, from, h.count), me);
    if (h.chunk >> 32 != codec.tag())
      throw InvalidArgument(fmt::format("all-reduce: rank {} sent a one-shot message encoded differently from this "
                                        "rank's {} (every rank must use the same algorithm, payload, bits, group size, "
                                        "spikes and rotate)",
                                        from, codec.name()),
                            me);
  };

  // The input has been encoded: the buffer becomes the accumulator.
  {
    Stopwatch w(stats.codec_s);
    std::memset(data.data(), 0, n * sizeof(float));
  }
  for (int p = 0; p < n_ranks; ++p) {  // fixed rank order: identical rounding on every rank
    if (p != me) {
      Stopwatch w(stats.wait_s);
      comm.wait(recv[static_cast<size_t>(p)], comm.deadline());
    }
    Stopwatch w(stats.codec_s);
    if (p != me) checkHeader(p);
    codec.decodeAccumulate(slot(p) + sizeof(Header), n, data.data());
  }
  Stopwatch w(stats.wait_s);
  comm.waitAll(send, comm.deadline());
}

}  // namespace flashring::detail

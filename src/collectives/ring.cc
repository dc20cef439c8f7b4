// Ring all-reduce: reduce-scatter ring, then all-gather ring (2(N-1) steps, each moving n/N elements).
#include "comm/patterns/ring.h"

#include <cstdint>

#include "collectives/algorithms.h"
#include "collectives/common.h"
#include "comm/tags.h"

namespace flashring::detail {

void ringAllreduce(Communicator& comm, std::span<float> data, Payload payload, Workspace& ws, AllreduceStats& stats) {
  const int n_ranks = comm.size(), me = comm.rank();
  const size_t n = data.size();
  const int next = ring::next(me, n_ranks), prev = ring::prev(me, n_ranks);
  auto chunk = [&](int c) { return part(n, n_ranks, c, kSliceAlign); };
  const size_t max_chunk = chunk(0).size();
  const bool bf16 = payload == Payload::BF16;

  Workspace::Frame frame(ws);
  float* tmp = bf16 ? nullptr : frame.get<float>(max_chunk).data();
  uint16_t* tmpb = bf16 ? frame.get<uint16_t>(2 * max_chunk).data() : nullptr;  // [send | recv]
  uint16_t* allb = bf16 ? frame.get<uint16_t>(n).data() : nullptr;              // bf16 image for the all-gather

  auto exchange = [&](const void* send, size_t send_bytes, void* recv, size_t recv_bytes, Tag tag) {
    Request reqs[2] = {comm.irecv(recv, recv_bytes, prev, tag), comm.isend(send, send_bytes, next, tag)};
    Stopwatch w(stats.wait_s);
    comm.waitAll(reqs, comm.deadline());
  };

  // Reduce-scatter: partial sums travel around the ring and accumulate in `data`.
  for (int s = 0; s < n_ranks - 1; ++s) {
    const Range sc = chunk(ring::rsSendChunk(me, s, n_ranks)), rc = chunk(ring::rsRecvChunk(me, s, n_ranks));
    const Tag tag = tags::make(tags::kRingReduceScatter, s);
    if (bf16) {
      {
        Stopwatch w(stats.codec_s);
        quant::toBf16(data.data() + sc.begin, sc.size(), tmpb);
      }
      exchange(tmpb, sc.size() * 2, tmpb + max_chunk, rc.size() * 2, tag);
      Stopwatch w(stats.codec_s);
      quant::fromBf16Accumulate(tmpb + max_chunk, rc.size(), data.data() + rc.begin);
    } else {
      exchange(data.data() + sc.begin, sc.size() * 4, tmp, rc.size() * 4, tag);
      Stopwatch w(stats.codec_s);
      float* dst = data.data() + rc.begin;
      for (size_t i = 0; i < rc.size(); ++i) dst[i] += tmp[i];
    }
  }

  // All-gather: the owned chunk is complete; pass every chunk on unchanged. With a bf16 payload the owner
  // keeps the rounded value it sends, so that every rank ends with the same bits.
  const Range own = chunk(ring::ownedChunk(me, n_ranks));
  if (bf16) {
    Stopwatch w(stats.codec_s);
    quant::toBf16(data.data() + own.begin, own.size(), allb + own.begin);
    quant::fromBf16(allb + own.begin, own.size(), data.data() + own.begin);
  }
  for (int s = 0; s < n_ranks - 1; ++s) {
    const Range sc = chunk(ring::agSendChunk(me, s, n_ranks)), rc = chunk(ring::agRecvChunk(me, s, n_ranks));
    const Tag tag = tags::make(tags::kRingAllGather, s);
    if (bf16) {
      exchange(allb + sc.begin, sc.size() * 2, allb + rc.begin, rc.size() * 2, tag);
      Stopwatch w(stats.codec_s);
      quant::fromBf16(allb + rc.begin, rc.size(), data.data() + rc.begin);
    } else {
      exchange(data.data() + sc.begin, sc.size() * 4, data.data() + rc.begin, rc.size() * 4, tag);
    }
  }
}

}  // namespace flashring::detail

// Exact two-step all-reduce: one-hop reduce-scatter (every rank sends slice j straight to rank j), sum in
// fp32 in rank order, then a one-hop all-gather of the reduced slices. 2 steps instead of 2(N-1); each
// rank still sends 2(N-1)/N of the buffer.
#include <cstdint>
#include <cstring>
#include <vector>

#include "collectives/algorithms.h"
#include "collectives/common.h"
#include "comm/tags.h"

namespace flashring::detail {

void twoStepAllreduce(Communicator& comm, std::span<float> data, Payload payload, AllreduceStats& stats) {
  const int n_ranks = comm.size(), me = comm.rank();
  const size_t n = data.size();
  const bool bf16 = payload == Payload::BF16;
  const size_t esize = bf16 ? 2 : 4;
  auto slice = [&](int j) { return part(n, n_ranks, j, kSliceAlign); };
  const Range mine = slice(me);
  const size_t m = mine.size();

  // recv: one slice-sized buffer per peer (the peers' contributions to my slice, then in the all-gather
  // nothing: fp32 lands in `data` directly). bf16 also needs the converted send image of the whole buffer.
  thread_local std::vector<std::byte> recv_buf, send_buf;
  thread_local std::vector<float> acc_buf;
  std::byte* recv = scratch(recv_buf, static_cast<size_t>(n_ranks) * m * esize);
  uint16_t* sendb = bf16 ? reinterpret_cast<uint16_t*>(scratch(send_buf, n * 2)) : nullptr;
  float* acc = scratch(acc_buf, m);
  std::vector<Request> reqs;
  reqs.reserve(2 * static_cast<size_t>(n_ranks));

  // Step 1: reduce-scatter.
  const Tag t1 = tags::make(tags::kTwoStepScatter, 0);
  for (int p = 0; p < n_ranks; ++p)
    if (p != me) reqs.push_back(comm.irecv(recv + static_cast<size_t>(p) * m * esize, m * esize, p, t1));
  if (bf16) {
    Stopwatch w(stats.codec_s);
    quant::toBf16(data.data(), n, sendb);
  }
  for (int j = 0; j < n_ranks; ++j) {
    if (j == me) continue;
    const Range r = slice(j);
    const void* src = bf16 ? static_cast<const void*>(sendb + r.begin) : static_cast<const void*>(data.data() + r.begin);
    reqs.push_back(comm.isend(src, r.size() * esize, j, t1));
  }
  {
    Stopwatch w(stats.wait_s);
    comm.waitAll(reqs, comm.deadline());
  }
  reqs.clear();
  {
    Stopwatch w(stats.codec_s);
    std::memset(acc, 0, m * sizeof(float));
    for (int p = 0; p < n_ranks; ++p) {
      if (p == me) {
        const float* x = data.data() + mine.begin;
        for (size_t i = 0; i < m; ++i) acc[i] += x[i];
      } else if (bf16) {
        quant::fromBf16Accumulate(reinterpret_cast<const uint16_t*>(recv + static_cast<size_t>(p) * m * 2), m, acc);
      } else {
        const float* x = reinterpret_cast<const float*>(recv + static_cast<size_t>(p) * m * 4);
        for (size_t i = 0; i < m; ++i) acc[i] += x[i];
      }
    }
    // The owner keeps exactly what it sends.
    if (bf16) {
      quant::toBf16(acc, m, sendb + mine.begin);
      quant::fromBf16(sendb + mine.begin, m, data.data() + mine.begin);
    } else {
      std::memcpy(data.data() + mine.begin, acc, m * sizeof(float));
    }
  }

  // Step 2: all-gather.
  const Tag t2 = tags::make(tags::kTwoStepGather, 0);
  for (int p = 0; p < n_ranks; ++p) {
    if (p == me) continue;
    const Range r = slice(p);
    void* dst = bf16 ? static_cast<void*>(sendb + r.begin) : static_cast<void*>(data.data() + r.begin);
    reqs.push_back(comm.irecv(dst, r.size() * esize, p, t2));
  }
  const void* own = bf16 ? static_cast<const void*>(sendb + mine.begin) : static_cast<const void*>(data.data() + mine.begin);
  for (int p = 0; p < n_ranks; ++p)
    if (p != me) reqs.push_back(comm.isend(own, m * esize, p, t2));
  {
    Stopwatch w(stats.wait_s);
    comm.waitAll(reqs, comm.deadline());
  }
  if (bf16) {
    Stopwatch w(stats.codec_s);
    for (int p = 0; p < n_ranks; ++p) {
      if (p == me) continue;
      const Range r = slice(p);
      quant::fromBf16(sendb + r.begin, r.size(), data.data() + r.begin);
    }
  }
}

}  // namespace flashring::detail

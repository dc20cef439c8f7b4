// Hierarchical all-reduce for ranks spread over nodes (allreduce.h states the contract): intra-node
// reduce-scatter, the all-reduce of each rank's slice across nodes, intra-node all-gather.
//
// Stage 1 (intra reduce-scatter): slice j of the buffer (part(n, K, j), on group boundaries for quantized
// codecs) is encoded with the intra codec and sent to local rank j; local rank j sums its own slice exactly
// and the decoded contributions in local-rank order, in fp32. Stage 2: that fp32 slice is all-reduced across
// the nodes among the ranks with the same local index, by allreduce() on a GroupCommunicator with the inter
// codec (its ranks' slices have equal sizes, so it checks sizes as any all-reduce does). Stage 3 (intra
// all-gather): the owner encodes the result with the intra codec, keeps the decoded bytes, and sends them to
// its node's other ranks. Owners of slice l on different nodes hold the same bits after stage 2, so they send
// the same bytes and every replica everywhere decodes the same values.
//
// Error feedback (allreduceWithError): stage 1 gives each sent slice value minus what its owner decodes;
// stage 2 adds allreduceWithError's share; stage 3 adds, on node 0's owner only, the result minus its decoded
// encoding. Summed over all ranks that is the exact fp32 sum minus the result (up to rounding), the contract.
//
// Every message starts with the 16-byte header of codec.h (element count, stage and codec tag), so a size or
// codec mismatch inside a node is named in the error instead of corrupting a sum.
#include <fmt/format.h>

#include <cstring>
#include <memory>
#include <vector>

#include "collectives/algorithms.h"
#include "collectives/codec.h"
#include "collectives/common.h"
#include "comm/tags.h"
#include "flashring/group_comm.h"

namespace flashring::detail {

NodeLayout nodeLayout(const Communicator& comm, const AllreduceOptions& o) {
  const int n = comm.size(), me = comm.rank();
  std::vector<int> ids;
  if (o.hier.ranks_per_node > 0) {
    if (n % o.hier.ranks_per_node != 0)
      throw InvalidArgument(
          fmt::format("hierarchical all-reduce: {} ranks per node does not divide {} ranks", o.hier.ranks_per_node, n),
          me);
    for (int r = 0; r < n; ++r) ids.push_back(r / o.hier.ranks_per_node);
  } else {
    ids = normalizeNodeIds(comm.nodeIds());
    if (ids.size() != static_cast<size_t>(n))
      throw InvalidArgument(
          fmt::format("hierarchical all-reduce: the communicator gave {} node ids for {} ranks", ids.size(), n), me);
  }
  NodeLayout L;
  L.nodes = 1 + *std::max_element(ids.begin(), ids.end());
  std::vector<std::vector<int>> members(static_cast<size_t>(L.nodes));
  for (int r = 0; r < n; ++r) members[static_cast<size_t>(ids[static_cast<size_t>(r)])].push_back(r);
  L.per_node = static_cast<int>(members[0].size());
  for (const auto& m : members)
    if (static_cast<int>(m.size()) != L.per_node)
      throw InvalidArgument(fmt::format("hierarchical all-reduce: nodes hold different numbers of ranks ({} and {}); "
                                        "every node must hold the same number",
                                        L.per_node, m.size()),
                            me);
  L.node = ids[static_cast<size_t>(me)];
  L.intra = members[static_cast<size_t>(L.node)];
  L.local = static_cast<int>(std::find(L.intra.begin(), L.intra.end(), me) - L.intra.begin());
  for (const auto& m : members) L.inter.push_back(m[static_cast<size_t>(L.local)]);
  return L;
}

Codec stageCodec(const StageCodec& s, const quant::Config& group) {
  if (s.bits == 0) return Codec{s.payload == Payload::BF16 ? Codec::Bf16 : Codec::F32, {}};
  quant::Config c = group;
  c.bits = s.bits;
  return Codec{Codec::Quant, c};
}

AllreduceOptions interOptions(const AllreduceOptions& o) {
  AllreduceOptions io = o;
  io.hier = HierarchicalOptions{};
  const StageCodec& s = o.hier.inter;
  if (o.hier.inter_oneshot) {
    io.algorithm = AllreduceAlgorithm::OneShot;
    io.oneshot_quantized = s.bits > 0;
    io.payload = s.payload;
    if (s.bits > 0) io.reduce_scatter.bits = s.bits;
  } else if (s.bits > 0) {
    io.algorithm = AllreduceAlgorithm::Quantized;
    io.reduce_scatter.bits = io.all_gather.bits = s.bits;
  } else {
    io.algorithm = AllreduceAlgorithm::TwoStep;
    io.payload = s.payload;
  }
  return io;
}

namespace {

constexpr uint32_t kScatterStage = 0xFFFFFFF0u, kGatherStage = 0xFFFFFFF1u;

void writeHeader(std::byte* p, size_t n, uint32_t stage, const Codec& codec) {
  const Header h{n, static_cast<uint64_t>(codec.tag()) << 32 | stage};
  std::memcpy(p, &h, sizeof h);
}

void checkHeader(const std::byte* p, size_t n, uint32_t stage, const Codec& codec, int me, int from_parent) {
  Header h;
  std::memcpy(&h, p, sizeof h);
  if (h.count != n || (h.chunk & 0xFFFFFFFFu) != stage)
    throw InvalidArgument(
        fmt::format("hierarchical all-reduce: rank {} has {} elements but rank {} has {}{}", me, n, from_parent,
                    h.count, (h.chunk & 0xFFFFFFFFu) != stage ? " (or runs another algorithm)" : ""),
        me);
  if (h.chunk >> 32 != codec.tag())
    throw InvalidArgument(fmt::format("hierarchical all-reduce: rank {} encodes the intra-node stages differently "
                                      "from rank {}'s {}",
                                      from_parent, me, codec.name()),
                          me);
}

}  // namespace

void hierarchicalAllreduce(Communicator& comm, std::span<float> data, const AllreduceOptions& o, AllreduceStats& stats,
                           float* error) {
  const NodeLayout L = nodeLayout(comm, o);
  const int K = L.per_node, me = L.local, pme = comm.rank();
  const size_t n = data.size();
  const Codec ci = stageCodec(o.hier.intra, o.reduce_scatter);
  const size_t align = ci.kind == Codec::Quant ? static_cast<size_t>(ci.cfg.group_size) : kSliceAlign;
  auto slice = [&](int j) { return part(n, K, j, align); };
  const Range mine = slice(me);
  const size_t m = mine.size();
  std::unique_ptr<GroupCommunicator> intra, inter;
  if (K > 1) intra = std::make_unique<GroupCommunicator>(comm, L.intra);
  if (L.nodes > 1) inter = std::make_unique<GroupCommunicator>(comm, L.inter);
  auto msgBytes = [&](int j) { return sizeof(Header) + ci.bytes(slice(j).size()); };
  auto waitOne = [&](Request& r) {
    Stopwatch w(stats.wait_s);
    comm.wait(r, comm.deadline());
  };

  // Workspace of this call: stage 1 and 3 send / receive buffers, the fp32 slice sum.
  std::vector<size_t> send_off(static_cast<size_t>(K) + 1), recv_off(static_cast<size_t>(K) + 1);
  size_t off = 0;
  for (int j = 0; j < K; ++j) {
    send_off[static_cast<size_t>(j)] = off;
    off += j == me ? 0 : msgBytes(j);
  }
  for (int p = 0; p < K; ++p) {
    recv_off[static_cast<size_t>(p)] = off;
    off += p == me ? 0 : msgBytes(me);
  }
  // Not zero-filled (every byte read is written first); glibc recycles blocks this size after the first call,
  // so repeated all-reduces do not fault fresh pages in.
  size_t arena_size = std::max<size_t>(off, 1);
  std::unique_ptr<std::byte[]> arena(new std::byte[arena_size]);
  std::unique_ptr<float[]> acc(new float[std::max<size_t>(m, 1)]);

  // Stage 1: intra-node reduce-scatter.
  if (K > 1) {
    const Tag t = tags::make(tags::kHierScatter, 0);
    std::vector<Request> recv(static_cast<size_t>(K)), send(static_cast<size_t>(K));
    for (int p = 0; p < K; ++p)
      if (p != me)
        recv[static_cast<size_t>(p)] = intra->irecv(arena.get() + recv_off[static_cast<size_t>(p)], msgBytes(me), p, t);
    for (int i = 1; i < K; ++i) {
      const int j = (me + i) % K;
      std::byte* buf = arena.get() + send_off[static_cast<size_t>(j)];
      const Range r = slice(j);
      {
        Stopwatch w(stats.codec_s);
        writeHeader(buf, n, kScatterStage, ci);
        ci.encode(data.data() + r.begin, r.size(), buf + sizeof(Header));
        if (error != nullptr) {
          ci.decode(buf + sizeof(Header), r.size(), error + r.begin);
          storeError(data.data() + r.begin, error + r.begin, r.size(), error + r.begin);
        }
      }
      send[static_cast<size_t>(j)] = intra->isend(buf, msgBytes(j), j, t);
      comm.progress();
    }
    std::memset(acc.get(), 0, m * sizeof(float));
    for (int p = 0; p < K; ++p) {  // local-rank order
      if (p == me) {
        Stopwatch w(stats.codec_s);
        for (size_t i = 0; i < m; ++i) acc[i] += data[mine.begin + i];
        continue;
      }
      waitOne(recv[static_cast<size_t>(p)]);
      Stopwatch w(stats.codec_s);
      const std::byte* in = arena.get() + recv_off[static_cast<size_t>(p)];
      checkHeader(in, n, kScatterStage, ci, pme, L.intra[static_cast<size_t>(p)]);
      ci.decodeAccumulate(in + sizeof(Header), m, acc.get());
    }
    Stopwatch w(stats.wait_s);
    comm.waitAll(send, comm.deadline());
  } else if (m > 0) {
    std::memcpy(acc.get(), data.data() + mine.begin, m * sizeof(float));
  }

  // Stage 2: across the nodes, among the ranks holding the same slice.
  if (inter) {
    const AllreduceOptions io = interOptions(o);
    AllreduceStats st;
    if (error != nullptr) {
      allreduceWithError(*inter, {acc.get(), m}, {error + mine.begin, m}, io, &st);
    } else {
      allreduce(*inter, {acc.get(), m}, io, &st);
    }
    stats.codec_s += st.codec_s;
    stats.wait_s += st.wait_s;
  }

  // Stage 3: intra-node all-gather.
  if (K > 1) {
    const Tag t = tags::make(tags::kHierGather, 0);
    std::vector<Request> recv(static_cast<size_t>(K)), send(static_cast<size_t>(K));
    // Reuse the arena: the send buffer (this rank's slice, msgBytes(me)) at the start, receives after it.
    std::vector<size_t> roff(static_cast<size_t>(K));
    size_t o2 = msgBytes(me);
    for (int p = 0; p < K; ++p) {
      roff[static_cast<size_t>(p)] = o2;
      if (p != me) o2 += msgBytes(p);
    }
    if (arena_size < o2) {
      arena.reset(new std::byte[o2]);
      arena_size = o2;
    }
    for (int p = 0; p < K; ++p)
      if (p != me)
        recv[static_cast<size_t>(p)] = intra->irecv(arena.get() + roff[static_cast<size_t>(p)], msgBytes(p), p, t);
    std::byte* buf = arena.get();
    {
      Stopwatch w(stats.codec_s);
      writeHeader(buf, n, kGatherStage, ci);
      ci.encode(acc.get(), m, buf + sizeof(Header));
      ci.decode(buf + sizeof(Header), m, data.data() + mine.begin);  // the owner keeps what it sends
      if (error != nullptr && L.node == 0) {
        std::vector<float> e(std::max<size_t>(m, 1));
        storeError(acc.get(), data.data() + mine.begin, m, e.data());
        for (size_t i = 0; i < m; ++i) error[mine.begin + i] += e[i];
      }
    }
    for (int i = 1; i < K; ++i) {
      const int p = (me + i) % K;
      send[static_cast<size_t>(p)] = intra->isend(buf, msgBytes(me), p, t);
    }
    for (int i = 1; i < K; ++i) {
      const int p = (me + K - i) % K;
      waitOne(recv[static_cast<size_t>(p)]);
      Stopwatch w(stats.codec_s);
      const std::byte* in = arena.get() + roff[static_cast<size_t>(p)];
      checkHeader(in, n, kGatherStage, ci, pme, L.intra[static_cast<size_t>(p)]);
      const Range r = slice(p);
      ci.decode(in + sizeof(Header), r.size(), data.data() + r.begin);
    }
    Stopwatch w(stats.wait_s);
    comm.waitAll(send, comm.deadline());
  } else if (m > 0) {
    std::memcpy(data.data() + mine.begin, acc.get(), m * sizeof(float));
  }
}

}  // namespace flashring::detail

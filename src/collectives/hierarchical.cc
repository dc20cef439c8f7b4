// Hierarchical all-reduce for ranks spread over nodes (allreduce.h states the contract): intra-node
// reduce-scatter, the all-reduce of each rank's slice across nodes, intra-node all-gather.
//
// Stages (per pipeline chunk; the schedule is described above hierarchicalAllreduce): an intra-node
// reduce-scatter (slice j of the chunk, part(size, K, j) on group boundaries for quantized codecs, encoded with
// the intra codec and sent to local rank j, which sums its own slice exactly and the decoded contributions in
// local-rank order, in fp32); across nodes, among the ranks with the same local index, the two-step (sub-slice
// t to node t, summed in node order, the sum encoded with the inter all-gather codec, the owner keeping its
// decoding) or the one-shot (every node's encoding of the whole slice, all R decoded and summed in node order);
// an intra-node all-gather (the owner encodes the result with the intra codec, keeps the decoded bytes and sends
// them). Owners of slice l on different nodes hold the same bits after the inter-node stage, so they send the
// same bytes and every replica everywhere decodes the same values.
//
// Error feedback (allreduceWithError): each stage's encoder adds its value minus what its receivers decode to
// this rank's error (the intra all-gather's on node 0 only, the inter all-gather's on the sub-slice's owner
// only), so the errors summed over all ranks are the exact fp32 sum minus the result (up to rounding).
//
// Every message starts with the 16-byte header of codec.h (element count, stage and codec tag), so a size or
// codec mismatch inside a node is named in the error instead of corrupting a sum.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
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

// err[i] += want[i] - got[i] where that is finite (NaN/Inf travel exactly: nothing to carry).
void addError(const float* want, const float* got, size_t n, float* err) {
  for (size_t i = 0; i < n; ++i) {
    const float d = want[i] - got[i];
    if (std::isfinite(d)) err[i] += d;
  }
}

// The inter-node stage's codecs: its reduce-scatter (or one-shot) and its all-gather.
Codec interCodec(const AllreduceOptions& io, bool all_gather) {
  if (io.algorithm == AllreduceAlgorithm::Quantized)
    return Codec{Codec::Quant, all_gather ? io.all_gather : io.reduce_scatter};
  if (io.algorithm == AllreduceAlgorithm::OneShot && io.oneshot_quantized)
    return Codec{Codec::Quant, io.reduce_scatter};
  return Codec{io.payload == Payload::BF16 ? Codec::Bf16 : Codec::F32, {}};
}

size_t alignOf(const Codec& a, const Codec& b) {
  if (a.kind != Codec::Quant && b.kind != Codec::Quant) return kSliceAlign;
  return static_cast<size_t>(
      std::max(a.kind == Codec::Quant ? a.cfg.group_size : 0, b.kind == Codec::Quant ? b.cfg.group_size : 0));
}

}  // namespace

// The pipeline, per chunk c of the buffer (chunk_elems, rounded to whole slices):
//   A  post every receive of the chunk; encode slice j with the intra codec and send it to local rank j
//   B  sum the node's contributions to this rank's slice (local-rank order, own values exact) into acc;
//      across nodes: encode sub-slice t of acc and send it to node t's rank (two-step), or encode all of acc
//      and send it to every node (one-shot)
//   C  two-step: sum sub-slice `node` over the nodes (node order, own exact), encode the sum with the inter
//      all-gather codec, keep its decoding, send it; one-shot: sum the R decodings in node order
//   D  two-step: decode the other nodes' sub-slices into acc; then encode acc with the intra codec, keep its
//      decoding in data, send it to the node's other ranks
//   E  decode the node's other slices into data
// Step s runs A(s), B(s-1), C(s-2), D(s-3), E(s-4), so quantizing and summing one chunk overlaps the transfers
// of its neighbours on both levels of links.
void hierarchicalAllreduce(Communicator& comm, std::span<float> data, const AllreduceOptions& o, Workspace& ws,
                           AllreduceStats& stats, float* error) {
  const NodeLayout L = nodeLayout(comm, o);
  const int K = L.per_node, R = L.nodes, kme = L.local, rme = L.node;
  const size_t Ks = static_cast<size_t>(K), Rs = static_cast<size_t>(R);
  const size_t n = data.size();
  const Codec ci = stageCodec(o.hier.intra, o.reduce_scatter);
  const AllreduceOptions io = interOptions(o);
  const bool oneshot = io.algorithm == AllreduceAlgorithm::OneShot;
  const Codec c2 = interCodec(io, false), c3 = interCodec(io, true);
  const size_t a1 = alignOf(ci, ci), a2 = alignOf(c2, c3);
  const size_t unit = Ks * a1 * Rs * a2;
  size_t chunk_len = o.chunk_elems == 0 ? n : o.chunk_elems;
  chunk_len = std::max(unit, (chunk_len + unit - 1) / unit * unit);
  const size_t nch = n == 0 ? 1 : (n + chunk_len - 1) / chunk_len;

  auto chunk = [&](size_t c) { return Range{std::min(n, c * chunk_len), std::min(n, (c + 1) * chunk_len)}; };
  auto islice = [&](size_t c, int j) {  // global range of local rank j's slice of chunk c
    const Range cr = chunk(c);
    const Range r = part(cr.size(), K, j, a1);
    return Range{cr.begin + r.begin, cr.begin + r.end};
  };
  auto sub = [&](size_t c, int t) { return part(islice(c, kme).size(), R, t, a2); };  // within my slice

  // Arena: per chunk, the messages of every stage; acc: per chunk, this rank's fp32 slice.
  struct Off {
    std::vector<size_t> rs1_send, rs1_recv, x_send, x_recv, ag2_recv, ag1_recv;
    size_t ag2_send = 0, ag1_send = 0, acc = 0;
  };
  std::vector<Off> off(nch);
  size_t bytes = 0, floats = 0, max_sub = 1;
  const size_t H = sizeof(Header);
  for (size_t c = 0; c < nch; ++c) {
    Off& f = off[c];
    f.rs1_send.assign(Ks, 0), f.rs1_recv.assign(Ks, 0), f.ag1_recv.assign(Ks, 0);
    f.x_send.assign(Rs, 0), f.x_recv.assign(Rs, 0), f.ag2_recv.assign(Rs, 0);
    const size_t m = islice(c, kme).size();
    for (int j = 0; j < K; ++j) {
      if (j == kme) continue;
      f.rs1_send[static_cast<size_t>(j)] = bytes, bytes += H + ci.bytes(islice(c, j).size());
      f.rs1_recv[static_cast<size_t>(j)] = bytes, bytes += H + ci.bytes(m);
      f.ag1_recv[static_cast<size_t>(j)] = bytes, bytes += H + ci.bytes(islice(c, j).size());
    }
    f.ag1_send = bytes, bytes += H + ci.bytes(m);
    for (int t = 0; t < R; ++t) {
      if (oneshot) {  // x_send[rme]: this rank's one encoding; x_recv[t]: node t's
        if (t == rme) f.x_send[static_cast<size_t>(t)] = bytes, bytes += H + c2.bytes(m);
        if (t != rme) f.x_recv[static_cast<size_t>(t)] = bytes, bytes += H + c2.bytes(m);
        continue;
      }
      if (t == rme) continue;
      f.x_send[static_cast<size_t>(t)] = bytes, bytes += H + c2.bytes(sub(c, t).size());
      f.x_recv[static_cast<size_t>(t)] = bytes, bytes += H + c2.bytes(sub(c, rme).size());
      f.ag2_recv[static_cast<size_t>(t)] = bytes, bytes += H + c3.bytes(sub(c, t).size());
    }
    f.ag2_send = bytes, bytes += H + c3.bytes(sub(c, rme).size());
    f.acc = floats, floats += m;
    max_sub = std::max({max_sub, m, sub(c, rme).size()});
  }
  // Not zero-filled (every byte read is written first); from the workspace, so reused across calls.
  Workspace::Frame frame(ws);
  std::byte* const arena = frame.get<std::byte>(bytes).data();
  float* const accs = frame.get<float>(floats).data();
  float* const tmp = frame.get<float>(max_sub).data();  // C's sum, and the error scratch
  std::unique_ptr<GroupCommunicator> intra, inter;
  if (K > 1) intra = std::make_unique<GroupCommunicator>(comm, L.intra);
  if (R > 1) inter = std::make_unique<GroupCommunicator>(comm, L.inter);
  const size_t nreq = nch * std::max(Ks, Rs);
  std::vector<Request> rs1_recv(nreq), rs1_send(nreq), ag1_recv(nreq), ag1_send(nreq), x_recv(nreq), x_send(nreq),
      ag2_recv(nreq), ag2_send(nreq);
  auto at = [&](size_t o2) { return arena + o2; };
  auto idx = [&](size_t c, int p) { return c * std::max(Ks, Rs) + static_cast<size_t>(p); };
  auto waitOne = [&](Request& r) {
    Stopwatch w(stats.wait_s);
    comm.wait(r, comm.deadline());
  };
  auto header = [&](std::byte* p, size_t c, const Codec& codec) {
    const Header h{n, static_cast<uint64_t>(codec.tag()) << 32 | c};
    std::memcpy(p, &h, sizeof h);
  };
  auto check = [&](const std::byte* p, size_t c, const Codec& codec, int from_parent, const char* stage) {
    Header h;
    std::memcpy(&h, p, sizeof h);
    if (h.count != n || (h.chunk & 0xFFFFFFFFu) != c)
      throw InvalidArgument(fmt::format("hierarchical all-reduce: rank {} has {} elements but rank {} has {} ({})",
                                        comm.rank(), n, from_parent, h.count, stage),
                            comm.rank());
    if (h.chunk >> 32 != codec.tag())
      throw InvalidArgument(fmt::format("hierarchical all-reduce: rank {} encodes the {} differently from rank {}'s {}",
                                        from_parent, stage, comm.rank(), codec.name()),
                            comm.rank());
  };
  const Tag tRs1 = tags::kHierScatter, tAg1 = tags::kHierGather, tX = tags::kHierInterScatter,
            tAg2 = tags::kHierInterGather;
  auto tag = [](Tag space, size_t c) { return tags::make(static_cast<tags::Space>(space), static_cast<int>(c)); };

  auto stageA = [&](size_t c) {
    const Off& f = off[c];
    const size_t m = islice(c, kme).size();
    for (int p = 0; p < K; ++p) {
      if (p == kme) continue;
      const size_t pi = static_cast<size_t>(p);
      rs1_recv[idx(c, p)] = intra->irecv(at(f.rs1_recv[pi]), H + ci.bytes(m), p, tag(tRs1, c));
      ag1_recv[idx(c, p)] = intra->irecv(at(f.ag1_recv[pi]), H + ci.bytes(islice(c, p).size()), p, tag(tAg1, c));
    }
    for (int t = 0; t < R; ++t) {
      if (t == rme) continue;
      const size_t ti = static_cast<size_t>(t);
      if (oneshot) {
        x_recv[idx(c, t)] = inter->irecv(at(f.x_recv[ti]), H + c2.bytes(m), t, tag(tX, c));
      } else {
        x_recv[idx(c, t)] = inter->irecv(at(f.x_recv[ti]), H + c2.bytes(sub(c, rme).size()), t, tag(tX, c));
        ag2_recv[idx(c, t)] = inter->irecv(at(f.ag2_recv[ti]), H + c3.bytes(sub(c, t).size()), t, tag(tAg2, c));
      }
    }
    for (int i = 1; i < K; ++i) {
      const int j = (kme + i) % K;
      std::byte* buf = at(f.rs1_send[static_cast<size_t>(j)]);
      const Range r = islice(c, j);
      {
        Stopwatch w(stats.codec_s);
        header(buf, c, ci);
        ci.encode(data.data() + r.begin, r.size(), buf + H);
        if (error != nullptr) {  // what this rank meant minus what local rank j decodes
          ci.decode(buf + H, r.size(), error + r.begin);
          storeError(data.data() + r.begin, error + r.begin, r.size(), error + r.begin);
        }
      }
      rs1_send[idx(c, j)] = intra->isend(buf, H + ci.bytes(r.size()), j, tag(tRs1, c));
      comm.progress();
    }
  };

  auto stageB = [&](size_t c) {
    const Off& f = off[c];
    const Range mine = islice(c, kme);
    const size_t m = mine.size();
    float* acc = accs + f.acc;
    std::memset(acc, 0, m * sizeof(float));
    for (int p = 0; p < K; ++p) {  // local-rank order
      if (p == kme) {
        Stopwatch w(stats.codec_s);
        for (size_t i = 0; i < m; ++i) acc[i] += data[mine.begin + i];
        continue;
      }
      waitOne(rs1_recv[idx(c, p)]);
      Stopwatch w(stats.codec_s);
      const std::byte* in = at(f.rs1_recv[static_cast<size_t>(p)]);
      check(in, c, ci, L.intra[static_cast<size_t>(p)], "intra-node reduce-scatter");
      ci.decodeAccumulate(in + H, m, acc);
    }
    if (R == 1) return;
    if (oneshot) {
      std::byte* buf = at(f.x_send[static_cast<size_t>(rme)]);
      {
        Stopwatch w(stats.codec_s);
        header(buf, c, c2);
        c2.encode(acc, m, buf + H);
        if (error != nullptr) {
          c2.decode(buf + H, m, tmp);
          addError(acc, tmp, m, error + mine.begin);
        }
      }
      for (int i = 1; i < R; ++i) {
        const int t = (rme + i) % R;
        x_send[idx(c, t)] = inter->isend(buf, H + c2.bytes(m), t, tag(tX, c));
      }
      comm.progress();
      return;
    }
    for (int i = 1; i < R; ++i) {
      const int t = (rme + i) % R;
      const Range s = sub(c, t);
      std::byte* buf = at(f.x_send[static_cast<size_t>(t)]);
      {
        Stopwatch w(stats.codec_s);
        header(buf, c, c2);
        c2.encode(acc + s.begin, s.size(), buf + H);
        if (error != nullptr) {
          c2.decode(buf + H, s.size(), tmp);
          addError(acc + s.begin, tmp, s.size(), error + mine.begin + s.begin);
        }
      }
      x_send[idx(c, t)] = inter->isend(buf, H + c2.bytes(s.size()), t, tag(tX, c));
      comm.progress();
    }
  };

  auto stageC = [&](size_t c) {
    if (R == 1) return;
    const Off& f = off[c];
    const Range mine = islice(c, kme);
    float* acc = accs + f.acc;
    float* sum = tmp;
    if (oneshot) {
      const size_t m = mine.size();
      std::memset(sum, 0, m * sizeof(float));
      for (int t = 0; t < R; ++t) {  // node order, every node's decoded encoding (its own included)
        const std::byte* in = at(t == rme ? f.x_send[static_cast<size_t>(t)] : f.x_recv[static_cast<size_t>(t)]);
        if (t != rme) waitOne(x_recv[idx(c, t)]);
        Stopwatch w(stats.codec_s);
        if (t != rme) check(in, c, c2, L.inter[static_cast<size_t>(t)], "inter-node one-shot");
        c2.decodeAccumulate(in + H, m, sum);
      }
      std::memcpy(acc, sum, m * sizeof(float));
      return;
    }
    const Range s = sub(c, rme);
    std::memset(sum, 0, s.size() * sizeof(float));
    for (int t = 0; t < R; ++t) {  // node order
      if (t == rme) {
        Stopwatch w(stats.codec_s);
        for (size_t i = 0; i < s.size(); ++i) sum[i] += acc[s.begin + i];
        continue;
      }
      waitOne(x_recv[idx(c, t)]);
      Stopwatch w(stats.codec_s);
      const std::byte* in = at(f.x_recv[static_cast<size_t>(t)]);
      check(in, c, c2, L.inter[static_cast<size_t>(t)], "inter-node reduce-scatter");
      c2.decodeAccumulate(in + H, s.size(), sum);
    }
    std::byte* buf = at(f.ag2_send);
    {
      Stopwatch w(stats.codec_s);
      header(buf, c, c3);
      c3.encode(sum, s.size(), buf + H);
      c3.decode(buf + H, s.size(), acc + s.begin);  // the owner keeps what it sends
      if (error != nullptr) addError(sum, acc + s.begin, s.size(), error + mine.begin + s.begin);
    }
    for (int i = 1; i < R; ++i) {
      const int t = (rme + i) % R;
      ag2_send[idx(c, t)] = inter->isend(buf, H + c3.bytes(s.size()), t, tag(tAg2, c));
    }
    comm.progress();
  };

  auto stageD = [&](size_t c) {
    const Off& f = off[c];
    const Range mine = islice(c, kme);
    const size_t m = mine.size();
    float* acc = accs + f.acc;
    if (R > 1 && !oneshot) {
      for (int i = 1; i < R; ++i) {
        const int t = (rme + R - i) % R;
        waitOne(ag2_recv[idx(c, t)]);
        Stopwatch w(stats.codec_s);
        const std::byte* in = at(f.ag2_recv[static_cast<size_t>(t)]);
        check(in, c, c3, L.inter[static_cast<size_t>(t)], "inter-node all-gather");
        const Range s = sub(c, t);
        c3.decode(in + H, s.size(), acc + s.begin);
      }
    }
    if (K == 1) {
      if (m > 0) std::memcpy(data.data() + mine.begin, acc, m * sizeof(float));
      return;
    }
    std::byte* buf = at(f.ag1_send);
    {
      Stopwatch w(stats.codec_s);
      header(buf, c, ci);
      ci.encode(acc, m, buf + H);
      ci.decode(buf + H, m, data.data() + mine.begin);  // the owner keeps what it sends
      if (error != nullptr && rme == 0) addError(acc, data.data() + mine.begin, m, error + mine.begin);
    }
    for (int i = 1; i < K; ++i) {
      const int p = (kme + i) % K;
      ag1_send[idx(c, p)] = intra->isend(buf, H + ci.bytes(m), p, tag(tAg1, c));
    }
    comm.progress();
  };

  auto stageE = [&](size_t c) {
    const Off& f = off[c];
    for (int i = 1; i < K; ++i) {
      const int p = (kme + K - i) % K;
      waitOne(ag1_recv[idx(c, p)]);
      Stopwatch w(stats.codec_s);
      const std::byte* in = at(f.ag1_recv[static_cast<size_t>(p)]);
      check(in, c, ci, L.intra[static_cast<size_t>(p)], "intra-node all-gather");
      const Range r = islice(c, p);
      ci.decode(in + H, r.size(), data.data() + r.begin);
    }
  };

  for (size_t step = 0; step < nch + 4; ++step) {
    if (step < nch) stageA(step);
    if (step >= 1 && step - 1 < nch) stageB(step - 1);
    if (step >= 2 && step - 2 < nch) stageC(step - 2);
    if (step >= 3 && step - 3 < nch) stageD(step - 3);
    if (step >= 4 && step - 4 < nch) stageE(step - 4);
  }
  Stopwatch w(stats.wait_s);
  for (auto* rs : {&rs1_send, &ag1_send, &x_send, &ag2_send}) comm.waitAll(*rs, comm.deadline());
}

}  // namespace flashring::detail

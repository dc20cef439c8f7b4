// flashring simulate's model (simulate.h): its byte counts are the library's own, its parts scale as the
// formulas say, Auto's SP pick is the argmin of the predictions, memory limits are checked, the built-in profiles
// and models are sane, bad inputs are named, and the published-figure rows are computed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "flashring/comm_setting.h"
#include "flashring/error.h"
#include "flashring/simulate.h"

namespace flashring::sim {
namespace {

Workload workload(int tp, int sp, int64_t prompt, const std::string& comm, int batch = 1) {
  Workload w;
  w.tp = tp;
  w.sp = sp;
  w.prompt = prompt;
  w.comm = comm;
  w.batch = batch;
  return w;
}

TEST(Simulate, BytesPerRankAreTheAllreduceWireBytes) {
  const LlamaConfig m = builtinModel("llama-3-70b");
  const Profile& p = profileByName("l40x4-pcie");
  for (const char* comm : {"exact", "bf16", "int8", "int4", "int4-int8"}) {
    const Prediction r = predict(m, p, workload(4, 1, 1024, comm, 8));
    const size_t count = size_t{8} * 1024 * 8192;
    const uint64_t per = allreduceWireBytes(count, 4, commAllreduceOptions(comm, 128, 0));
    EXPECT_EQ(r.bytes_per_rank, 80 * 2 * per) << comm;
    EXPECT_EQ(allreduceCost(count, 4, commAllreduceOptions(comm, 128, 0), p).wire_bytes, per) << comm;
    EXPECT_EQ(r.inter_node_bytes_per_rank, 0u) << comm;
    EXPECT_NEAR(r.prefill_s, r.compute_s + r.comm_s + r.quant_s, 1e-12 * r.prefill_s) << comm;
  }
  EXPECT_EQ(predict(m, p, workload(4, 1, 1024, "bf16")).allreduce, "twostep-bf16");
  EXPECT_EQ(predict(m, p, workload(4, 1, 1024, "int4")).allreduce, "flash-int4");
}

TEST(Simulate, HierarchicalPutsOnlyItsInterStageOnTheSlowLink) {
  const LlamaConfig m = builtinModel("llama-3-70b");
  const Profile& p = profileByName("a100x8-ib200");  // 2 nodes of 8
  const Prediction hier = predict(m, p, workload(16, 1, 8192, "hier-bf16-int4"));
  const Prediction flat = predict(m, p, workload(16, 1, 8192, "int4"));
  AllreduceOptions o = commAllreduceOptions("hier-bf16-int4", 128, 0);
  o.hier.ranks_per_node = 8;
  const size_t all = size_t{8192} * 8192;  // TP: every rank holds every token
  EXPECT_EQ(hier.inter_node_bytes_per_rank, 80 * 2 * allreduceInterNodeBytes(all, 16, o));
  EXPECT_EQ(hier.bytes_per_rank, 80 * 2 * allreduceWireBytes(all, 16, o));
  EXPECT_LT(hier.inter_node_bytes_per_rank, flat.inter_node_bytes_per_rank / 4);
  EXPECT_LT(hier.tp_comm_s, flat.tp_comm_s);
  EXPECT_EQ(hier.allreduce, "hier-bf16-int4");
  // Auto over two nodes goes hierarchical, as allreduce() does.
  EXPECT_EQ(predict(m, p, workload(16, 1, 8192, "auto")).allreduce, "hier-bf16-int8");
}

TEST(Simulate, DoublingLinkBandwidthHalvesTheCommunication) {
  const LlamaConfig m = builtinModel("llama-3-8b");
  Profile p = profileByName("l40x8-pcie");
  p.intra.latency_s = p.inter.latency_s = 0;  // bytes / bandwidth only
  for (const char* comm : {"bf16", "int4"}) {
    const Prediction a = predict(m, p, workload(8, 1, 8192, comm));
    const Prediction b = predict(m, withLinkScale(p, 2), workload(8, 1, 8192, comm));
    EXPECT_NEAR(b.comm_s, a.comm_s / 2, 1e-12 * a.comm_s) << comm;
    EXPECT_DOUBLE_EQ(b.compute_s, a.compute_s) << comm;
    EXPECT_DOUBLE_EQ(b.quant_s, a.quant_s) << comm;
    EXPECT_GT(a.comm_s, 0) << comm;
  }
}

TEST(Simulate, OneRankOfTensorParallelismHasNoAllreduce) {
  const LlamaConfig m = builtinModel("llama-2-7b");
  const Profile& p = profileByName("a100x8-nvswitch");
  for (const char* comm : {"bf16", "int4"}) {
    const Prediction r = predict(m, p, workload(1, 1, 4096, comm));
    EXPECT_EQ(r.tp_comm_s, 0);
    EXPECT_EQ(r.quant_s, 0);
    EXPECT_EQ(r.comm_s, 0);
    EXPECT_EQ(r.bytes_per_rank, 0u);
    EXPECT_EQ(r.decode_comm_s, 0);
    EXPECT_EQ(r.allreduce, "-");
    EXPECT_GT(r.prefill_s, 0);
  }
  // SP alone: attention communication, still no all-reduce.
  const Prediction s = predict(m, p, workload(1, 4, 32768, "bf16"));
  EXPECT_EQ(s.tp_comm_s, 0);
  EXPECT_GT(s.bytes_per_rank, 0u);
}

TEST(Simulate, AutoSchemeIsTheArgminOfThePredictions) {
  for (const char* model : {"llama-2-7b", "llama-3-8b", "llama-3-70b"}) {
    const LlamaConfig m = builtinModel(model);
    for (const char* prof : {"a10x4-pcie", "h100x8-nvswitch", "ascend910bx8-hccs", "h100x8-ib400", "cpu-10gbe"}) {
      const Profile& p = profileByName(prof);
      for (int sp : {2, 4}) {
        for (int64_t prompt : {int64_t{2048}, int64_t{32768}, int64_t{131072}}) {
          const Prediction r = predict(m, p, workload(1, sp, prompt, "bf16"));
          ASSERT_EQ(r.scheme_s.size(), 4u);
          const double best = *std::min_element(r.scheme_s.begin(), r.scheme_s.end());
          EXPECT_DOUBLE_EQ(r.sp_comm_s, best) << model << " " << prof << " sp " << sp << " S " << prompt;
          EXPECT_EQ(r.scheme, r.auto_scheme);
          // Forcing each scheme gives its own entry.
          const SpScheme all[] = {SpScheme::TokenRing, SpScheme::RingKV, SpScheme::Ulysses, SpScheme::AllGatherKV};
          for (size_t i = 0; i < 4; ++i) {
            Workload w = workload(1, sp, prompt, "bf16");
            w.scheme = all[i];
            const Prediction f = predict(m, p, w);
            EXPECT_EQ(f.scheme, all[i]);
            EXPECT_DOUBLE_EQ(f.sp_comm_s, r.scheme_s[i]);
            EXPECT_GE(f.prefill_s, r.prefill_s);
          }
        }
      }
    }
  }
}

TEST(Simulate, MemoryCheck) {
  const Profile& a10 = profileByName("a10x4-pcie");
  const Prediction big = predict(builtinModel("llama-3-70b"), a10, workload(1, 1, 1024, "bf16"));
  EXPECT_FALSE(big.fits);
  EXPECT_GT(big.memory_bytes, 24e9 * 5);  // 140 GB of bf16 weights
  EXPECT_TRUE(predict(builtinModel("llama-2-7b"), a10, workload(1, 1, 1024, "bf16")).fits);
  // TP 4 divides the weights by 4 (and 70B still does not fit in 4 x 24 GB).
  const Prediction tp4 = predict(builtinModel("llama-3-70b"), a10, workload(4, 1, 1024, "bf16"));
  EXPECT_NEAR(tp4.memory_bytes, big.memory_bytes / 4, 0.01 * big.memory_bytes);
  EXPECT_FALSE(tp4.fits);
  EXPECT_TRUE(
      predict(builtinModel("llama-3-70b"), profileByName("h100x8-nvswitch"), workload(8, 1, 8192, "bf16")).fits);
}

TEST(Simulate, ComputeBoundPrefillAndMemoryBoundDecode) {
  const LlamaConfig m = builtinModel("llama-3-8b");
  const Profile& p = profileByName("h100x8-nvswitch");
  const Prediction r = predict(m, p, workload(1, 1, 8192, "bf16"));
  // Prefill: 2 FLOPs per weight per token at 70% of peak (attention aside).
  const double flops = 2.0 * m.linearMacsPerToken() * 8192;
  EXPECT_NEAR(r.linear_s, flops / (p.peak_flops * p.gemm_eff), 1e-9 * r.linear_s);
  // Decode: every weight read once per token.
  const double weights = (m.linearMacsPerToken() + double(m.n_vocab) * m.n_embd) * 2;
  EXPECT_GT(r.decode_step_s, weights / (p.mem_Bps * p.mem_eff));
  EXPECT_LT(r.decode_step_s, 1.2 * weights / (p.mem_Bps * p.mem_eff));
  EXPECT_NEAR(r.decode_tok_s, 1 / r.decode_step_s, 1e-9);
  // Longer prompts cost more than linearly (causal attention).
  const Prediction l = predict(m, p, workload(1, 1, 65536, "bf16"));
  EXPECT_GT(l.prefill_s, 8 * r.prefill_s);
  EXPECT_GT(l.attention_s / l.prefill_s, r.attention_s / r.prefill_s);
}

TEST(Simulate, LowBitCodecsCutBytesAndPayInCodecTime) {
  const LlamaConfig m = builtinModel("llama-3-70b");
  const Profile& p = profileByName("l40x4-pcie");
  const Prediction bf = predict(m, p, workload(4, 1, 1024, "bf16", 8));
  const Prediction i8 = predict(m, p, workload(4, 1, 1024, "int8", 8));
  const Prediction i4 = predict(m, p, workload(4, 1, 1024, "int4", 8));
  EXPECT_EQ(bf.quant_s, 0);  // GPU profiles: exact reductions fused into the transfer
  EXPECT_GT(i8.quant_s, 0);
  // 4.25 bits per value (INT4 + 4 bytes of metadata per 128) against 16: 3.76x fewer bytes.
  EXPECT_NEAR(static_cast<double>(bf.bytes_per_rank) / static_cast<double>(i4.bytes_per_rank), 16 / 4.25, 0.01);
  EXPECT_LT(i4.prefill_s, i8.prefill_s);
  EXPECT_LT(i8.prefill_s, bf.prefill_s);
  EXPECT_DOUBLE_EQ(i4.compute_s, bf.compute_s);
  // CPU profiles pay for exact reductions too.
  EXPECT_GT(predict(m, profileByName("cpu-10gbe"), workload(4, 1, 1024, "exact")).quant_s, 0);
}

TEST(Simulate, ProfilesAndModels) {
  std::set<std::string> names;
  for (const Profile& p : builtinProfiles()) {
    EXPECT_TRUE(names.insert(p.name).second) << p.name;
    EXPECT_GT(p.peak_flops, 0) << p.name;
    EXPECT_GT(p.mem_Bps, 0) << p.name;
    EXPECT_GT(p.mem_bytes, 0) << p.name;
    EXPECT_GT(p.codec_Bps, 0) << p.name;
    EXPECT_GT(p.intra.bandwidthBps(), 0) << p.name;
    EXPECT_FALSE(p.sources.empty()) << p.name;
    for (double e : {p.gemm_eff, p.attn_eff, p.mem_eff, p.intra.efficiency, p.inter.efficiency})
      EXPECT_TRUE(e > 0 && e <= 1) << p.name;
    if (p.nodes > 1 && p.gpus_per_node > 1) {
      EXPECT_LT(p.inter.bandwidthBps(), p.intra.bandwidthBps()) << p.name;
    }
    EXPECT_EQ(&profileByName(p.name), &p);
  }
  EXPECT_GE(builtinProfiles().size(), 12u);
  EXPECT_EQ(withNodes(profileByName("h100x8-ib400"), 8).ranks(), 64);
  EXPECT_THROW(withNodes(profileByName("a10x4-pcie"), 2), InvalidArgument);
  const LlamaConfig m = builtinModel("llama-3-8b");
  EXPECT_NEAR(m.linearMacsPerToken(), 6.98e9, 0.01e9);  // 8.03 B parameters less the embeddings and head
  EXPECT_EQ(builtinModel("llama-2-70b").n_head_kv, 8);
  EXPECT_EQ(builtinModel("llama-2-13b").n_embd, 5120);
  EXPECT_NEAR(builtinModel("llama-3-70b").linearMacsPerToken(), 68.45e9, 0.1e9);
}

TEST(Simulate, BadInputsAreNamed) {
  auto message = [](auto&& fn) {
    try {
      fn();
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string prof = message([] { profileByName("dgx-b200"); });
  EXPECT_NE(prof.find("dgx-b200"), std::string::npos);
  EXPECT_NE(prof.find("l40x4-pcie"), std::string::npos);
  EXPECT_NE(prof.find("mi300xx8-xgmi"), std::string::npos);
  const std::string mod = message([] { builtinModel("llama-4"); });
  EXPECT_NE(mod.find("llama-4"), std::string::npos);
  EXPECT_NE(mod.find("llama-3-70b"), std::string::npos);
  const LlamaConfig m = builtinModel("llama-3-8b");
  const Profile& p = profileByName("a10x4-pcie");
  EXPECT_NE(message([&] { predict(m, p, workload(4, 2, 1024, "bf16")); }).find("8 ranks"), std::string::npos);
  EXPECT_NE(message([&] { predict(m, p, workload(2, 1, 1024, "int3")); }).find("int3"), std::string::npos);
  EXPECT_NE(message([&] { predict(m, profileByName("a100x8-ib100"), workload(3, 4, 1024, "bf16")); }).find("tp 3"),
            std::string::npos);
  EXPECT_THROW(predict(m, p, workload(1, 4, 4, "bf16")), InvalidArgument);
}

TEST(Simulate, GridsFitTheRanks) {
  const LlamaConfig m = builtinModel("llama-3-8b");
  for (const Profile& p : builtinProfiles())
    for (auto [tp, sp] : grids(m, p)) {
      EXPECT_LE(tp * sp, p.ranks());
      EXPECT_LE(tp, m.n_head);
      EXPECT_NO_THROW(predict(m, p, workload(tp, sp, 8192, "bf16"))) << p.name << " " << tp << "x" << sp;
    }
}

TEST(Simulate, PaperFiguresAreComputed) {
  const auto figs = paperFigures();
  ASSERT_GE(figs.size(), 10u);
  // The figures the README reports as reproduced; a change to the model that moves them out of +-25% fails here.
  const std::set<std::string> reproduced = {
      "tokenring-mixed-step", "tokenring-ring-over-q", "flashcomm-l40-int4-allreduce",
      "quickreduce-bf16",     "quickreduce-int4",      "quickreduce-int4-speedup"};
  std::set<std::string> seen;
  for (const PaperFigure& f : figs) {
    EXPECT_TRUE(std::isfinite(f.ratio()) && f.ratio() > 0) << f.name;
    EXPECT_GT(f.published, 0) << f.name;
    EXPECT_FALSE(f.source.empty() || f.note.empty()) << f.name;
    if (reproduced.count(f.name)) {
      EXPECT_TRUE(f.reproduced()) << f.name << " ratio " << f.ratio();
      EXPECT_NEAR(f.ratio(), 1.0, 0.25) << f.name;
    } else {
      EXPECT_FALSE(f.reproduced()) << f.name << " now reproduces (ratio " << f.ratio() << "): update the README";
      EXPECT_GE(f.implied_link_scale, 0) << f.name;
    }
    seen.insert(f.name);
  }
  for (const std::string& n : reproduced) EXPECT_TRUE(seen.count(n)) << n;
}

// The CPU terms of CPU profiles (calibratedProfile measures them; built-in GPU profiles leave them 0).
TEST(Simulate, TransportCpuAddsPerByteAndPerRendezvousMessage) {
  Profile p = profileByName("cpu-10gbe");
  ASSERT_EQ(p.cores, 0);
  const size_t count = size_t{4} << 20;  // 16 MiB of fp32: 4 chunks of 1 Mi values
  const AllreduceOptions o = commAllreduceOptions("int8", 128, 0);
  const AllreduceCost base = allreduceCost(count, 4, o, p);
  EXPECT_EQ(base.transport_cpu_s, 0);
  EXPECT_EQ(base.messages, 4 * 2 * 3);  // chunks x (reduce-scatter + all-gather) x peers
  Profile q = p;
  q.wire_cpu_s_per_byte = 2e-9;
  q.msg_cpu_s = 1e-4;
  const AllreduceCost c = allreduceCost(count, 4, o, q);
  const double cpu = static_cast<double>(c.wire_bytes) * 2e-9 + 24 * 1e-4;
  EXPECT_DOUBLE_EQ(c.transport_cpu_s, cpu);
  EXPECT_NEAR(c.comm_s, base.comm_s + cpu, 1e-12);
  EXPECT_DOUBLE_EQ(c.codec_s, base.codec_s);
  // Eager-sized messages (16 Ki values: 6 messages of ~2.7 KB) pay the per-byte term only.
  const AllreduceCost s = allreduceCost(16384, 4, o, q);
  EXPECT_DOUBLE_EQ(s.transport_cpu_s, static_cast<double>(s.wire_bytes) * 2e-9);
}

TEST(Simulate, CodecRatesArePerCodec) {
  Profile p = profileByName("cpu-10gbe");
  const size_t count = size_t{4} << 20;
  const AllreduceOptions i8 = commAllreduceOptions("int8", 128, 0), i4 = commAllreduceOptions("int4", 128, 0),
                         ex = commAllreduceOptions("exact", 128, 0);
  const double a8 = allreduceCost(count, 4, i8, p).codec_s, a4 = allreduceCost(count, 4, i4, p).codec_s,
               ax = allreduceCost(count, 4, ex, p).codec_s;
  Profile q = p;
  q.codec_rates = {{"int8", p.codec_Bps / 2}, {"fp32", p.codec_Bps * 4}};
  EXPECT_DOUBLE_EQ(q.codecRate(8, Payload::F32), p.codec_Bps / 2);
  EXPECT_DOUBLE_EQ(q.codecRate(4, Payload::F32), p.codec_Bps);  // not listed: codec_Bps
  EXPECT_DOUBLE_EQ(q.codecRate(0, Payload::F32), p.codec_Bps * 4);
  EXPECT_NEAR(allreduceCost(count, 4, i8, q).codec_s, 2 * a8, 1e-12);
  EXPECT_DOUBLE_EQ(allreduceCost(count, 4, i4, q).codec_s, a4);
  EXPECT_NEAR(allreduceCost(count, 4, ex, q).codec_s, ax / 4, 1e-12);
}

TEST(Simulate, CpuMachinesOverlapCpuWithTheLinksOverPipelinedPieces) {
  Profile p = profileByName("cpu-1gbe");
  p.wire_cpu_s_per_byte = 1e-9;
  const AllreduceOptions o = commAllreduceOptions("int4", 128, 0);
  const size_t count = size_t{4} << 20;
  const AllreduceCost serial = allreduceCost(count, 4, o, p);  // cores 0: link + transport, codec on top
  EXPECT_NEAR(serial.comm_s, serial.link_s + serial.transport_cpu_s, 1e-12);
  p.cores = 2;
  const AllreduceCost c = allreduceCost(count, 4, o, p);
  EXPECT_EQ(c.stages, 4);  // 4 chunks of 1 Mi values
  const double L = c.link_s, P = c.codec_s + c.transport_cpu_s;
  EXPECT_NEAR(c.comm_s + c.codec_s, std::max(L, P) + std::min(L, c.codec_s) / 4, 1e-12);
  EXPECT_DOUBLE_EQ(c.link_s, serial.link_s);
  EXPECT_DOUBLE_EQ(c.codec_s, serial.codec_s);
  EXPECT_LT(c.comm_s + c.codec_s, serial.comm_s + serial.codec_s);
  // One chunk: the codec is not hidden; the transport's CPU streams with the link.
  const AllreduceCost one = allreduceCost(size_t{1} << 18, 4, o, p);
  EXPECT_EQ(one.stages, 1);
  EXPECT_NEAR(one.comm_s + one.codec_s,
              std::max(one.link_s, one.codec_s + one.transport_cpu_s) + std::min(one.link_s, one.codec_s), 1e-12);
  // The ring pipelines over its 2(N-1) rounds.
  const AllreduceCost ring = allreduceCost(count, 4, commAllreduceOptions("ring-fp32", 128, 0), p);
  EXPECT_EQ(ring.stages, 6);
}

TEST(Simulate, SharedUplinksDivideTheNodeLink) {
  Profile p = withEmulatedLinks(profileByName("cpu-10gbe"), "nodes:2x2", 10e9, 1e9);
  EXPECT_TRUE(p.inter_shared);
  const AllreduceOptions o = commAllreduceOptions("hier-bf16-int4", 128, 0);
  const size_t count = size_t{4} << 20;
  const AllreduceCost shared = allreduceCost(count, 4, o, p);
  p.inter_shared = false;
  const AllreduceCost own = allreduceCost(count, 4, o, p);
  // The inter stage: 2 rounds of latency + inter bytes through the uplink; 2 ranks sharing it move twice the bytes.
  const double b = static_cast<double>(own.inter_bytes);
  EXPECT_NEAR(shared.link_s - own.link_s, p.inter.seconds(2 * b) - p.inter.seconds(b), 1e-12);
  EXPECT_GT(shared.link_s - own.link_s, 0.5 * b / p.inter.bandwidthBps());
}

TEST(Simulate, EmulatedLinksAndProfileJson) {
  EXPECT_DOUBLE_EQ(parseRate("1gbit"), 1e9);
  EXPECT_DOUBLE_EQ(parseRate("500mbit"), 5e8);
  EXPECT_DOUBLE_EQ(parseRate("2.5gbit"), 2.5e9);
  EXPECT_DOUBLE_EQ(parseRate("125mbps"), 1e9);
  EXPECT_THROW(parseRate("fast"), InvalidArgument);
  EXPECT_THROW(parseRate("1gbyte"), InvalidArgument);
  const Profile base = profileByName("cpu-1gbe");
  const Profile star = withEmulatedLinks(base, "star", 1e9);
  EXPECT_DOUBLE_EQ(star.intra.bandwidthBps(), 1e9 / 8 * 1448 / 1514);  // TCP goodput of the frames tbf counts
  EXPECT_EQ(star.intra.topology, Topology::Star);
  EXPECT_EQ(star.nodes, 1);
  EXPECT_EQ(star.gpus_per_node, base.ranks());
  EXPECT_DOUBLE_EQ(star.intra.latency_s, base.intra.latency_s);
  EXPECT_EQ(withEmulatedLinks(base, "mesh", 1e9).intra.topology, Topology::Mesh);
  // run.sh's tbf buckets: 1 MiB burst, 1.2x peak rate beyond 128 KiB (payload: x 1448/1514).
  const double gp = 1448.0 / 1514, bw = star.intra.bandwidthBps();
  EXPECT_DOUBLE_EQ(star.intra.burst_bytes, 1048576 * gp);
  EXPECT_DOUBLE_EQ(star.intra.peak_bytes, 131072 * gp);
  EXPECT_DOUBLE_EQ(star.intra.seconds(100e3), 0);                               // within the peak bucket
  EXPECT_DOUBLE_EQ(star.intra.seconds(1e6), (1e6 - 131072 * gp) / (1.2 * bw));  // the peak rate limits
  EXPECT_DOUBLE_EQ(star.intra.seconds(20e6), (20e6 - 1048576 * gp) / bw);       // the rate limits
  EXPECT_DOUBLE_EQ(base.intra.seconds(1e6), 1e6 / base.intra.bandwidthBps());   // no shaper
  const Profile two = withEmulatedLinks(base, "nodes:2x2", 10e9, 1e9);
  EXPECT_EQ(two.nodes, 2);
  EXPECT_EQ(two.gpus_per_node, 2);
  EXPECT_NEAR(two.intra.bandwidthBps() / two.inter.bandwidthBps(), 10, 1e-9);
  EXPECT_THROW(withEmulatedLinks(base, "ring", 1e9), InvalidArgument);
  EXPECT_THROW(withEmulatedLinks(base, "nodes:2x2", 1e9), InvalidArgument);  // no node rate
  Profile p = two;
  p.codec_rates = {{"int4", 3e9}, {"fp32", 9e9}};
  p.wire_cpu_s_per_byte = 1.5e-9;
  p.msg_cpu_s = 7e-5;
  p.merge_Bps = 4e9;
  p.cores = 2;
  const Profile q = profileFromJson(profileToJson(p));
  EXPECT_EQ(q.name, p.name);
  EXPECT_EQ(q.nodes, 2);
  EXPECT_EQ(q.gpus_per_node, 2);
  EXPECT_TRUE(q.inter_shared);
  EXPECT_DOUBLE_EQ(q.inter.bandwidthBps(), p.inter.bandwidthBps());
  EXPECT_DOUBLE_EQ(q.codecRate(4, Payload::F32), 3e9);
  EXPECT_DOUBLE_EQ(q.codecRate(0, Payload::F32), 9e9);
  EXPECT_DOUBLE_EQ(q.wire_cpu_s_per_byte, 1.5e-9);
  EXPECT_DOUBLE_EQ(q.msg_cpu_s, 7e-5);
  EXPECT_DOUBLE_EQ(q.merge_Bps, 4e9);
  EXPECT_EQ(q.cores, 2);
  const size_t count = size_t{4} << 20;
  const AllreduceOptions o = commAllreduceOptions("hier-bf16-int4", 128, 0);
  EXPECT_DOUBLE_EQ(allreduceCost(count, 4, o, q).comm_s, allreduceCost(count, 4, o, p).comm_s);
  EXPECT_THROW(profileFromJson("{}"), InvalidArgument);
  EXPECT_THROW(profileFromJson("not json"), InvalidArgument);
}

// CostModel's merge and transport CPU terms: with links too fast to matter, a ring is its compute plus, per
// step, the merges (1.5 per step under causal zigzag, 3 passes over the rank's (out, lse) each) and the
// transport's CPU per byte it sends.
TEST(Simulate, CostModelAddsMergesAndTransportCpuToTheCompute) {
  CostModelParams cp;
  cp.bandwidth_Bps = 1e30;
  cp.latency_s = 0;
  cp.topology = Topology::Mesh;
  cp.kernel_flops = 1e10;
  const SpShape shape{1, 4096, 8, 8, 128};
  SpAttentionOptions so;
  so.causal = true;
  so.layout = SeqLayout::Zigzag;
  const int N = 4;
  const double tok = 4096.0 / N, res = tok * 8 * 129 * 4, kv = 2 * tok * 8 * 128 * 4, q = tok * 8 * 128 * 4;
  const double C = 4.0 * 8 * 128 * 4096.0 * 4096.0 * (4097.0 / 8192.0) / N / 1e10;
  EXPECT_NEAR(CostModel(cp).predict(SpScheme::RingKV, shape, N, so), C, 1e-12);
  CostModelParams m = cp;
  m.merge_Bps = 5e9;
  m.wire_cpu_s_per_byte = 1e-9;
  const double merge1 = 3 * res / 5e9;
  EXPECT_NEAR(CostModel(m).predict(SpScheme::RingKV, shape, N, so), C + N * 1.5 * merge1 + (N - 1) * kv * 1e-9, 1e-12);
  // TokenRing: the visitor's merges, the owner's merge of each returned result, Q and results on the wire.
  EXPECT_NEAR(CostModel(m).predict(SpScheme::TokenRing, shape, N, so),
              C + N * 1.5 * merge1 + N * merge1 + N * res * 1e-9 + (N - 1) * q * 1e-9, 1e-12);
  // JSON keeps them.
  const CostModel back = CostModel::fromJson(CostModel(m).toJson());
  EXPECT_DOUBLE_EQ(back.params().merge_Bps, 5e9);
  EXPECT_DOUBLE_EQ(back.params().wire_cpu_s_per_byte, 1e-9);
  // attentionCost reports the merges' share.
  Profile p = withEmulatedLinks(profileByName("cpu-1gbe"), "mesh", 1e9);
  p.merge_Bps = 5e9;
  const AttentionCost a = attentionCost(shape, N, SpScheme::RingKV, so, p);
  p.merge_Bps = 0;
  const AttentionCost b = attentionCost(shape, N, SpScheme::RingKV, so, p);
  EXPECT_EQ(b.merge_s, 0);
  EXPECT_NEAR(a.merge_s, a.total_s - b.total_s, 1e-12);
  EXPECT_GT(a.merge_s, 0);
  EXPECT_DOUBLE_EQ(a.compute_s, b.compute_s);
  EXPECT_NEAR(b.compute_s, 4.0 * 8 * 128 * 4096.0 * 4096.0 * (4097.0 / 8192.0) / N / (p.peak_flops * p.attn_eff),
              1e-9 * b.compute_s);
}

TEST(Simulate, SyncWaitAddsPerCollectiveOfALayer) {
  const LlamaConfig m = builtinModel("llama-2-7b");
  Profile p = profileByName("cpu-10gbe");
  const Prediction a = predict(m, p, workload(2, 2, 1024, "int8"));
  p.sync_s = 1e-3;
  const Prediction b = predict(m, p, workload(2, 2, 1024, "int8"));
  EXPECT_NEAR(b.tp_comm_s, a.tp_comm_s + 32 * 2 * 1e-3, 1e-9);  // two all-reduces per layer
  EXPECT_NEAR(b.sp_comm_s, a.sp_comm_s + 32 * 1e-3, 1e-9);      // one SP attention call per layer
  EXPECT_DOUBLE_EQ(b.compute_s, a.compute_s);
  const Prediction one = predict(m, p, workload(1, 1, 1024, "int8"));
  EXPECT_EQ(one.comm_s, 0);
}

TEST(Simulate, LinearLayersOfTheSlowestTpRank) {
  const Profile& p = profileByName("h100x8-nvswitch");
  const LlamaConfig m8 = builtinModel("llama-3-8b");  // 32 heads, 8 KV heads: TP 8 splits evenly
  const Prediction even = predict(m8, p, workload(8, 1, 8192, "bf16"));
  EXPECT_NEAR(even.linear_s, 2.0 * 8192 * m8.linearMacsPerToken() / 8 / (p.peak_flops * p.gemm_eff),
              1e-9 * even.linear_s);
  // TP 16 over 8 KV heads: every rank computes a whole KV head (replicated), more than 1/16 of the K and V.
  const LlamaConfig m70 = builtinModel("llama-3-70b");
  const Profile two = profileByName("h100x8-ib400");
  const Prediction rep = predict(m70, two, workload(16, 1, 8192, "bf16"));
  const double d = m70.n_embd, hd = m70.head_dim;
  const double macs = m70.n_layer * (2 * d * (m70.n_head / 16) * hd + 2 * d * hd + 3 * d * (m70.n_ff / 16.0));
  EXPECT_NEAR(rep.linear_s, 2.0 * 8192 * macs / (two.peak_flops * two.gemm_eff), 1e-6 * rep.linear_s);
  EXPECT_GT(rep.linear_s, 2.0 * 8192 * m70.linearMacsPerToken() / 16 / (two.peak_flops * two.gemm_eff));
}

}  // namespace
}  // namespace flashring::sim

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

}  // namespace
}  // namespace flashring::sim

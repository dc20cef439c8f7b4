// Built-in hardware profiles of `flashring simulate`, each with its sources.
//
// Assumptions, stated once and shared (never fitted to a published result; paperFigures() checks them):
//   GPUs   gemm_eff 0.70: large bf16 GEMMs in cuBLAS/hipBLASLt/CANN reach 70-80% of dense tensor peak;
//          attn_eff 0.50: FlashAttention-2-class forward kernels reach 50-70% on A100, less on newer parts;
//          mem_eff 0.80: streaming kernels (weights, KV cache, the codecs) reach 80-90% of datasheet bandwidth;
//          codec_Bps = 0.80 x memory bandwidth (the codecs are elementwise streaming kernels);
//          link efficiency 0.80 of the datasheet rate for PCIe, NVLink, xGMI and HCCS (what nccl-tests and
//          p2pBandwidthLatencyTest report for large messages with peer-to-peer enabled), 0.90 for InfiniBand /
//          RoCE (RDMA at large messages); latency per message round 10 us on PCIe, HCCS and the NICs, 5 us on
//          NVLink/NVSwitch and xGMI (NCCL/RCCL small-message all-reduce latencies are a few rounds of that);
//          exact all-reduces reduce inside the transfer (NCCL-style kernels): no codec time for them;
//          weights and activations bf16 (2 bytes).
//   CPUs   flashring's own engine: weights Q8_0 (1.0625 bytes), fp32 activations, codec and reductions on the
//          cores; gemm_eff 0.50 (OpenBLAS sgemm on dequantized panels at all-core AVX2 clocks), attn_eff 0.30
//          (the block kernel), mem_eff 0.70 (STREAM on EPYC), codec_Bps 20 GB/s; TCP goodput 0.94 of 1 GbE and
//          0.90 of 10 GbE, 50 / 25 us per message round.
// Topology: a star where every rank has one uplink to a switch or root complex (PCIe, NVSwitch, the NICs), a
// mesh where every pair has its own link (xGMI, HCCS).
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "flashring/error.h"
#include "flashring/simulate.h"

namespace flashring::sim {

namespace {

constexpr double G = 1e9, T = 1e12, GiB = 1024.0 * 1024 * 1024;

// Shared link classes.
LinkSpec pcieGen4() { return {32 * G, 0.80, 10e-6, Topology::Star}; }  // x16: 64 GB/s both directions
LinkSpec nic(double gbit) { return {gbit / 8 * G, 0.90, 10e-6, Topology::Star}; }

Profile gpu(std::string name, std::string desc, std::string sources, int gpus, double flops, double mem_bw, double mem,
            LinkSpec intra) {
  Profile p;
  p.name = std::move(name);
  p.description = std::move(desc);
  p.sources = std::move(sources);
  p.gpus_per_node = gpus;
  p.peak_flops = flops;
  p.gemm_eff = 0.70;
  p.attn_eff = 0.50;
  p.mem_Bps = mem_bw;
  p.mem_eff = 0.80;
  p.mem_bytes = mem;
  p.codec_Bps = 0.80 * mem_bw;
  p.fused_exact_reduce = true;
  p.weight_bytes = 2;
  p.act_bytes = 2;
  p.intra = intra;
  p.inter = intra;
  return p;
}

// NVIDIA A10 datasheet: 125 TFLOPS BF16/FP16 tensor (dense; 250 with sparsity), 24 GB GDDR6 at 600 GB/s,
// PCIe Gen4 x16 (64 GB/s bidirectional), no NVLink. Four cards under one host: TokenRing's testbed.
Profile a10x4() {
  return gpu("a10x4-pcie", "4x NVIDIA A10 24GB, PCIe Gen4 x16 (no NVLink)", "NVIDIA A10 datasheet", 4, 125 * T, 600 * G,
             24 * GiB, pcieGen4());
}

// NVIDIA L40 datasheet: 181.05 TFLOPS BF16 tensor with FP32 accumulate (dense; 362.1 with sparsity), 48 GB
// GDDR6 at 864 GB/s, PCIe Gen4 x16 (64 GB/s bidirectional), no NVLink. Flash Communication's PCIe testbed.
Profile l40(int n) {
  return gpu(fmt::format("l40x{}-pcie", n), fmt::format("{}x NVIDIA L40 48GB, PCIe Gen4 x16 (no NVLink)", n),
             "NVIDIA L40 datasheet", n, 181.05 * T, 864 * G, 48 * GiB, pcieGen4());
}

// NVIDIA A100 SXM4 80GB datasheet: 312 TFLOPS BF16 tensor (dense), 80 GB HBM2e at 2,039 GB/s, NVLink 3 at
// 600 GB/s per GPU (12 links x 25 GB/s each way: 300 GB/s per direction) through NVSwitch (HGX A100 8-GPU).
LinkSpec nvlink3() { return {300 * G, 0.80, 5e-6, Topology::Star}; }
Profile a100x8() {
  return gpu("a100x8-nvswitch", "8x NVIDIA A100 SXM4 80GB, NVLink 3 / NVSwitch", "NVIDIA A100 datasheet", 8, 312 * T,
             2039 * G, 80 * GiB, nvlink3());
}

// NVIDIA H100 SXM5 datasheet: 1,979 TFLOPS BF16 tensor with sparsity (989.4 dense), 80 GB HBM3 at 3.35 TB/s,
// NVLink 4 at 900 GB/s per GPU (18 links: 450 GB/s per direction) through NVSwitch (HGX H100 8-GPU).
LinkSpec nvlink4() { return {450 * G, 0.80, 5e-6, Topology::Star}; }
Profile h100x8() {
  return gpu("h100x8-nvswitch", "8x NVIDIA H100 SXM5 80GB, NVLink 4 / NVSwitch", "NVIDIA H100 datasheet", 8, 989.4 * T,
             3350 * G, 80 * GiB, nvlink4());
}

// Huawei Ascend 910B (Atlas 800T A2): Huawei publishes no full datasheet. Figures as reported from vendor material:
// ~320 TFLOPS FP16, 64 GB HBM2e at ~1.6 TB/s, HCCS full mesh of 8 NPUs with 392 GB/s per NPU = 7 links x 56 GB/s,
// taken here as both directions together (28 GB/s per direction per pair). Approximate; SKUs 910B1-B4 differ.
Profile ascend() {
  return gpu("ascend910bx8-hccs", "8x Huawei Ascend 910B 64GB, HCCS full mesh",
             "Huawei Atlas 800T A2 / Ascend 910B public figures (approximate)", 8, 320 * T, 1600 * G, 64 * GiB,
             {28 * G, 0.80, 10e-6, Topology::Mesh});
}

// AMD Instinct MI300X datasheet: 1,307.4 TFLOPS FP16/BF16 dense (2,614.9 with sparsity), 192 GB HBM3 at 5.3 TB/s,
// AMD Infinity Fabric: 7 links per GPU, one to each peer of an 8-GPU platform, 128 GB/s bidirectional each
// (896 GB/s aggregate): 64 GB/s per direction per pair. QuickReduce's testbed.
Profile mi300x() {
  return gpu("mi300xx8-xgmi", "8x AMD Instinct MI300X 192GB, Infinity Fabric (xGMI) full mesh",
             "AMD Instinct MI300X datasheet", 8, 1307.4 * T, 5300 * G, 192 * GiB, {64 * G, 0.80, 5e-6, Topology::Mesh});
}

// Nodes of 8 GPUs with one NIC per GPU (rail-optimized, as DGX A100: 8x ConnectX-6 HDR 200 Gb/s; DGX H100: 8x
// ConnectX-7 NDR 400 Gb/s; a 100 Gb/s EDR/RoCE fabric for the cheaper case). Two nodes by default (--nodes).
Profile multiNode(Profile base, double gbit, const char* fabric) {
  base.name = fmt::format("{}-ib{:g}", base.name.substr(0, base.name.find('-')), gbit);
  base.description = fmt::format("nodes of {} ({} GPUs each), one {:g} Gbit/s {} NIC per GPU", base.description,
                                 base.gpus_per_node, gbit, fabric);
  base.sources += fmt::format("; NVIDIA ConnectX / DGX {:g} Gb/s specifications", gbit);
  base.nodes = 2;
  base.inter = nic(gbit);
  return base;
}

// CPU nodes running flashring's own engine: AMD EPYC 7763 (64 cores, 2.45 GHz base, two 256-bit FMA units per
// core: 32 fp32 FLOP/cycle -> 5.0 TFLOPS; 8 channels of DDR4-3200: 204.8 GB/s), 256 GB, one rank per node.
Profile cpuCluster(double gbit, double eff, double latency) {
  Profile p;
  p.name = fmt::format("cpu-{:g}gbe", gbit);
  p.description = fmt::format("4 nodes of 1x AMD EPYC 7763 (64 cores), {:g} GbE, TCP", gbit);
  p.sources = "AMD EPYC 7763 product page (cores, clock, DDR4-3200 x8); IEEE 802.3 line rate";
  p.gpus_per_node = 1;
  p.nodes = 4;
  p.peak_flops = 64 * 2.45e9 * 32;
  p.gemm_eff = 0.50;
  p.attn_eff = 0.30;
  p.mem_Bps = 204.8 * G;
  p.mem_eff = 0.70;
  p.mem_bytes = 256 * GiB;
  p.codec_Bps = 20 * G;
  p.fused_exact_reduce = false;
  p.weight_bytes = 34.0 / 32;  // Q8_0
  p.act_bytes = 4;
  p.intra = {gbit / 8 * G, eff, latency, Topology::Star};
  p.inter = p.intra;
  return p;
}

std::vector<Profile> makeProfiles() {
  return {a10x4(),
          l40(4),
          l40(8),
          a100x8(),
          h100x8(),
          ascend(),
          mi300x(),
          multiNode(a100x8(), 100, "EDR InfiniBand / 100GbE RoCE"),
          multiNode(a100x8(), 200, "HDR InfiniBand"),
          multiNode(h100x8(), 400, "NDR InfiniBand"),
          cpuCluster(1, 0.94, 50e-6),
          cpuCluster(10, 0.90, 25e-6)};
}

}  // namespace

const std::vector<Profile>& builtinProfiles() {
  static const std::vector<Profile> profiles = makeProfiles();
  return profiles;
}

std::vector<std::string> profileNames() {
  std::vector<std::string> names;
  for (const Profile& p : builtinProfiles()) names.push_back(p.name);
  return names;
}

const Profile& profileByName(const std::string& name) {
  for (const Profile& p : builtinProfiles())
    if (p.name == name) return p;
  throw InvalidArgument(fmt::format("unknown profile '{}': use one of {}, or local (this machine as calibrated)", name,
                                    fmt::join(profileNames(), ", ")));
}

Profile withNodes(const Profile& p, int nodes) {
  if (nodes == p.nodes) return p;
  if (nodes < 1 || nodes > 64 || (p.nodes == 1 && p.gpus_per_node > 1))
    throw InvalidArgument(
        fmt::format("--nodes {}: profile {} is {} node(s) of {}; only multi-node profiles (and "
                    "the CPU clusters) take 1..64 nodes",
                    nodes, p.name, p.nodes, p.gpus_per_node));
  Profile q = p;
  q.nodes = nodes;
  return q;
}

Profile withLinkScale(const Profile& p, double scale) {
  if (!(scale > 0)) throw InvalidArgument(fmt::format("link scale {}: must be positive", scale));
  Profile q = p;
  q.intra.peak_Bps *= scale;
  q.inter.peak_Bps *= scale;
  return q;
}

double LinkSpec::seconds(double bytes) const {
  const double bw = bandwidthBps();
  if (burst_bytes <= 0) return bytes / bw;
  double t = std::max(0.0, (bytes - burst_bytes) / bw);
  if (peak_ratio > 1) t = std::max(t, (bytes - peak_bytes) / (peak_ratio * bw));
  return t;
}

double Profile::codecRate(int bits, Payload payload) const {
  const std::string key = bits > 0 ? fmt::format("int{}", bits) : payload == Payload::BF16 ? "bf16" : "fp32";
  for (const auto& [k, v] : codec_rates)
    if (k == key && v > 0) return v;
  return codec_Bps;
}

namespace {

nlohmann::json linkJson(const LinkSpec& l) {
  return {{"peak_Bps", l.peak_Bps},       {"efficiency", l.efficiency},
          {"latency_s", l.latency_s},     {"topology", topologyName(l.topology)},
          {"burst_bytes", l.burst_bytes}, {"peak_bytes", l.peak_bytes},
          {"peak_ratio", l.peak_ratio}};
}
LinkSpec linkFrom(const nlohmann::json& j) {
  LinkSpec l;
  l.peak_Bps = j.at("peak_Bps").get<double>();
  l.efficiency = j.at("efficiency").get<double>();
  l.latency_s = j.at("latency_s").get<double>();
  const std::string t = j.at("topology").get<std::string>();
  if (t != "star" && t != "mesh") throw InvalidArgument(fmt::format("profile JSON: topology '{}'", t));
  l.topology = t == "star" ? Topology::Star : Topology::Mesh;
  l.burst_bytes = j.value("burst_bytes", 0.0);
  l.peak_bytes = j.value("peak_bytes", 0.0);
  l.peak_ratio = j.value("peak_ratio", 0.0);
  return l;
}

}  // namespace

std::string profileToJson(const Profile& p) {
  nlohmann::json rates = nlohmann::json::object();
  for (const auto& [k, v] : p.codec_rates) rates[k] = v;
  const nlohmann::json j{{"name", p.name},
                         {"description", p.description},
                         {"sources", p.sources},
                         {"gpus_per_node", p.gpus_per_node},
                         {"nodes", p.nodes},
                         {"peak_flops", p.peak_flops},
                         {"gemm_eff", p.gemm_eff},
                         {"attn_eff", p.attn_eff},
                         {"mem_Bps", p.mem_Bps},
                         {"mem_eff", p.mem_eff},
                         {"mem_bytes", p.mem_bytes},
                         {"codec_Bps", p.codec_Bps},
                         {"fused_exact_reduce", p.fused_exact_reduce},
                         {"weight_bytes", p.weight_bytes},
                         {"act_bytes", p.act_bytes},
                         {"intra", linkJson(p.intra)},
                         {"inter", linkJson(p.inter)},
                         {"inter_shared", p.inter_shared},
                         {"codec_rates", rates},
                         {"wire_cpu_s_per_byte", p.wire_cpu_s_per_byte},
                         {"msg_cpu_s", p.msg_cpu_s},
                         {"eager_bytes", p.eager_bytes},
                         {"merge_Bps", p.merge_Bps},
                         {"sync_s", p.sync_s},
                         {"cores", p.cores}};
  return j.dump(1);
}

Profile profileFromJson(const std::string& text) {
  try {
    const auto j = nlohmann::json::parse(text);
    Profile p;
    p.name = j.at("name").get<std::string>();
    p.description = j.value("description", "");
    p.sources = j.value("sources", "");
    p.gpus_per_node = j.at("gpus_per_node").get<int>();
    p.nodes = j.at("nodes").get<int>();
    p.peak_flops = j.at("peak_flops").get<double>();
    p.gemm_eff = j.at("gemm_eff").get<double>();
    p.attn_eff = j.at("attn_eff").get<double>();
    p.mem_Bps = j.at("mem_Bps").get<double>();
    p.mem_eff = j.at("mem_eff").get<double>();
    p.mem_bytes = j.at("mem_bytes").get<double>();
    p.codec_Bps = j.at("codec_Bps").get<double>();
    p.fused_exact_reduce = j.at("fused_exact_reduce").get<bool>();
    p.weight_bytes = j.at("weight_bytes").get<double>();
    p.act_bytes = j.at("act_bytes").get<double>();
    p.intra = linkFrom(j.at("intra"));
    p.inter = linkFrom(j.at("inter"));
    p.inter_shared = j.value("inter_shared", false);
    if (j.contains("codec_rates"))
      for (const auto& [k, v] : j.at("codec_rates").items()) p.codec_rates.emplace_back(k, v.get<double>());
    p.wire_cpu_s_per_byte = j.value("wire_cpu_s_per_byte", 0.0);
    p.msg_cpu_s = j.value("msg_cpu_s", 0.0);
    p.eager_bytes = j.value("eager_bytes", 65536.0);
    p.merge_Bps = j.value("merge_Bps", 0.0);
    p.sync_s = j.value("sync_s", 0.0);
    p.cores = j.value("cores", 0);
    if (p.gpus_per_node < 1 || p.nodes < 1 || !(p.peak_flops > 0) || !(p.mem_Bps > 0) || !(p.codec_Bps > 0) ||
        !(p.intra.bandwidthBps() > 0) || !(p.act_bytes > 0))
      throw InvalidArgument(
          "profile JSON: ranks, peak_flops, mem_Bps, codec_Bps, the link and act_bytes must be positive");
    return p;
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(fmt::format("profile JSON: {}", e.what()));
  }
}

double parseRate(const std::string& rate) {
  size_t i = 0;
  while (i < rate.size() && (std::isdigit(static_cast<unsigned char>(rate[i])) || rate[i] == '.')) ++i;
  double v = 0;
  try {
    v = i > 0 ? std::stod(rate.substr(0, i)) : 0;
  } catch (const std::exception&) {
    v = 0;
  }
  std::string unit = rate.substr(i);
  for (char& ch : unit) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  const std::pair<const char*, double> units[] = {{"bit", 1}, {"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9},
                                                  {"bps", 8}, {"kbps", 8e3}, {"mbps", 8e6}, {"gbps", 8e9}};
  for (const auto& [u, f] : units)
    if (unit == u && v > 0) return v * f;
  throw InvalidArgument(fmt::format(
      "rate '{}': expected a number and a tc unit (bit, kbit, mbit, gbit; bps, kbps, mbps, gbps = bytes/s)", rate));
}

Profile withEmulatedLinks(const Profile& p, const std::string& topology, double rate_bps, double node_rate_bps) {
  if (!(rate_bps > 0)) throw InvalidArgument(fmt::format("emulated link rate {}: must be positive", rate_bps));
  constexpr double goodput = 1448.0 / 1514.0;  // TCP payload per Ethernet frame at MTU 1500 (tbf counts frames)
  // run.sh's tbf defaults for a rate: burst max(1 MiB, 8 ms of it), peak 1.2x with a bucket of max(128 KiB, 1 ms).
  auto shaped = [&](LinkSpec l, double bps) {
    const double Bps = bps / 8;
    l.peak_Bps = Bps * goodput;
    l.efficiency = 1;
    l.burst_bytes = std::max(1048576.0, Bps * 8e-3) * goodput;
    l.peak_bytes = std::min(std::max(131072.0, Bps * 1e-3), std::max(1048576.0, Bps * 8e-3)) * goodput;
    l.peak_ratio = 1.2;
    return l;
  };
  Profile q = p;
  q.intra = shaped(q.intra, rate_bps);
  q.inter = q.intra;
  q.inter_shared = false;
  if (topology == "star" || topology == "mesh") {
    q.intra.topology = q.inter.topology = topology == "star" ? Topology::Star : Topology::Mesh;
    q.gpus_per_node = p.ranks();
    q.nodes = 1;
  } else if (topology.rfind("nodes:", 0) == 0) {
    int R = 0, K = 0;
    if (std::sscanf(topology.c_str() + 6, "%dx%d", &R, &K) != 2 || R < 1 || K < 1)
      throw InvalidArgument(fmt::format("emulated topology '{}': expected nodes:RxK", topology));
    if (!(node_rate_bps > 0)) throw InvalidArgument(fmt::format("topology {}: needs a node rate", topology));
    q.gpus_per_node = K;
    q.nodes = R;
    q.intra.topology = Topology::Star;
    q.inter = shaped(q.inter, node_rate_bps);
    q.inter.topology = Topology::Star;
    q.inter_shared = true;
  } else {
    throw InvalidArgument(fmt::format("emulated topology '{}': expected star, mesh or nodes:RxK", topology));
  }
  q.description =
      fmt::format("{}; links emulated as bench/netem {} at {:g} Mbit/s{}", p.description, topology, rate_bps / 1e6,
                  node_rate_bps > 0 ? fmt::format(", uplinks {:g} Mbit/s", node_rate_bps / 1e6) : "");
  return q;
}

}  // namespace flashring::sim

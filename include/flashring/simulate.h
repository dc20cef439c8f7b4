// Performance model of the LLaMA engine (llama.h) under tensor x sequence parallelism on hardware we cannot run
// here: GPU nodes over PCIe, NVLink/NVSwitch, xGMI or HCCS, several nodes over InfiniBand/RoCE, CPU clusters
// over Ethernet, or this machine as CostModel::calibrate() measures it. `flashring simulate` is its command.
//
// What it predicts for one prefill of `prompt` tokens x `batch` sequences and the decode after it, per rank
// (world rank = sp_rank * tp + tp_rank, as the engine; ranks fill the nodes in order, gpus_per_node each):
//   linear layers   per layer 2 * tokens * params FLOPs and params * weight_bytes bytes of weights of the slowest
//                   TP rank's shard (tpShard: its query heads, KV heads and FFN units; params / tp when even):
//                   time = max(FLOPs / (peak * gemm_eff), bytes / (mem_bw * mem_eff)) (compute- or memory-bound)
//   attention       causal, zigzag-balanced: 4 * batch * heads/tp * head_dim * S^2 * (S+1)/(2S) / sp FLOPs at
//                   peak * attn_eff; under SP the scheme's communication from CostModel::predict (costmodel.h)
//                   with the profile's link, its bandwidth scaled by 4 / act_bytes because CostModel counts fp32
//                   elements (so TokenRing overlaps its Q hops and result returns exactly as the library models
//                   it); the exposed communication = CostModel's time minus the compute
//   TP all-reduces  2 per layer of batch * tokens_per_rank * n_embd values, in the chosen codec: wire bytes from
//                   allreduceWireBytes, of which allreduceInterNodeBytes go over the inter-node link when the TP
//                   group spans nodes (Hierarchical puts only its inter stage there); time = message rounds x
//                   latency + bytes / bandwidth (a mesh spreads an all-to-all over its N-1 links; a star sends
//                   everything through one uplink); codec time = the codec kernels' memory traffic / codec_Bps
//                   (not overlapped with the transfer; exact algorithms cost none where fused_exact_reduce)
//   decode          per token: weights / tp + the KV cache read at mem_bw * mem_eff (or FLOPs at peak), plus
//                   2 all-reduces per layer of batch * n_embd values (the engine's one-shot twin below 32 KiB),
//                   the SP pass-Q round trip per layer and one token-choice round per token
// Nothing else: no kernel-launch or framework overhead, no overlap of TP communication with compute (the engine
// has none), activations and KV cache in act_bytes (bf16 on GPUs, fp32 on the CPU engine). Efficiency fractions
// are assumptions stated once per profile (profiles.cc, with the datasheet figures they scale), never fitted to
// a published result; paperFigures() compares the model with the papers' measurements and says which assumption
// a miss contradicts.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "flashring/allreduce.h"
#include "flashring/comm.h"
#include "flashring/costmodel.h"
#include "flashring/llama.h"
#include "flashring/sp_attention.h"

namespace flashring::sim {

// One class of link as a rank sees it: datasheet rate of one direction times the achieved fraction.
struct LinkSpec {
  double peak_Bps = 0;    // datasheet, one direction, per rank (its uplink on a star, one pair link on a mesh)
  double efficiency = 1;  // achieved fraction of peak_Bps (large messages)
  double latency_s = 0;   // per message round
  Topology topology = Topology::Star;
  // A token-bucket shaper (bench/netem's tbf; 0 = none): after idle, `burst_bytes` may pass ahead of the rate,
  // but at most `peak_ratio` x the rate beyond the first `peak_bytes` (payload bytes).
  double burst_bytes = 0, peak_bytes = 0, peak_ratio = 0;
  double bandwidthBps() const { return peak_Bps * efficiency; }
  // Seconds to move `bytes` over this link starting with full buckets: max((b - burst) / rate, (b - peak_bytes)
  // / (peak_ratio x rate), 0); without a shaper, b / rate.
  double seconds(double bytes) const;
};

struct Profile {
  std::string name;         // --profile NAME
  std::string description;  // one line
  std::string sources;      // where the figures come from (short; profiles.cc has the details)
  int gpus_per_node = 1;    // ranks per node
  int nodes = 1;
  double peak_flops = 0;           // datasheet dense bf16/fp16 tensor FLOP/s of one device (fp32 SIMD peak for CPUs)
  double gemm_eff = 1;             // achieved fraction of peak in the linear layers
  double attn_eff = 1;             // achieved fraction of peak in the attention kernel
  double mem_Bps = 0;              // datasheet memory bandwidth of one device
  double mem_eff = 1;              // achieved fraction of it (weights, KV cache)
  double mem_bytes = 0;            // device memory
  double codec_Bps = 0;            // memory traffic per second of the all-reduce codec kernels
  bool fused_exact_reduce = true;  // exact all-reduces reduce inside the transfer (NCCL-style): no codec time
  double weight_bytes = 2;         // bytes per weight (bf16 on GPUs; the GGUF type's on CPUs)
  double act_bytes = 2;            // bytes per activation element (SP messages, KV cache, the codec's input)
  LinkSpec intra;                  // between the ranks of a node
  LinkSpec inter;                  // a rank's link to other nodes (nodes > 1)
  bool inter_shared = false;       // the ranks of a node share ONE uplink (inter is the node's), else one each

  // CPU costs the built-in GPU profiles leave at 0 (there the kernels are the codec rate above, and NCCL or the
  // copy engines move the bytes); `local` measures them, every rank at once (calibratedProfile):
  //   codec_rates      the codec work of an all-reduce per codec, as memory traffic per second (the traffic that
  //                    allreduceCost counts, divided by the measured time of that codec's quantize / reduce /
  //                    dequantize passes): keys fp32, bf16, int8, int6, int5, int4; a codec not listed uses codec_Bps
  //   wire_cpu_s_per_byte  the transport's CPU time per byte a rank sends (MPI over TCP: the copies into and out
  //                    of the sockets and the TCP stack, on the same cores; measured on loopback, where the CPU and
  //                    not a link is the limit); added to the transfer, not overlapped
  //   msg_cpu_s        the transport's overhead per message beyond latency and bytes, for messages larger than
  //                    eager_bytes (MPI's rendezvous: a handshake more, the wake-ups of one more message)
  //   merge_Bps        SP attention's merges of partial (out, lse) blocks, memory traffic per second
  //   sync_s           ranks that time-share cores do not finish a compute phase together: the wait of each
  //                    collective that follows one (every TP all-reduce and SP attention call of a layer)
  //   cores            CPU cores the ranks of a node share (0: every rank has its own device); the rates above
  //                    were measured with all ranks running at once, so they already include the sharing
  std::vector<std::pair<std::string, double>> codec_rates;
  double wire_cpu_s_per_byte = 0;
  double msg_cpu_s = 0;
  double eager_bytes = 65536;  // OpenMPI's TCP eager limit
  double merge_Bps = 0;
  double sync_s = 0;
  int cores = 0;
  int ranks() const { return gpus_per_node * nodes; }
  // The codec rate of one stage codec (bits 0: the exact payload), codec_Bps when not measured.
  double codecRate(int bits, Payload payload) const;
};

// Profiles as JSON (calibrate once with --profile local --save-profile FILE, reuse with --profile-file FILE).
std::string profileToJson(const Profile& p);
Profile profileFromJson(const std::string& json);

// The profile with its links replaced by emulated ones as bench/netem/run.sh builds them: `topology` star, mesh
// or nodes:RxK (R nodes of K ranks: a star of `rate_bps` inside each node, one shared uplink of `node_rate_bps`
// per node), rates in bit/s. Bandwidth = the TCP goodput of the rate (1448 payload bytes per 1514-byte frame);
// latencies and every CPU cost stay the profile's. The links get run.sh's default tbf buckets (burst max(1 MiB, 8 ms
// of the rate), peak rate 1.2x beyond max(128 KiB, 1 ms of the rate)), so a call's first bytes on a link pass
// faster than the rate (calls are assumed to start with full buckets). InvalidArgument for a bad topology or rate.
Profile withEmulatedLinks(const Profile& p, const std::string& topology, double rate_bps, double node_rate_bps = 0);
// A tc-style rate ("1gbit", "500mbit", "10gbit", "125mbps" = bytes/s) in bit/s; InvalidArgument otherwise.
double parseRate(const std::string& rate);

// Predicted seconds of one spAttention call (costmodel.h) with the profile's link, kernel rate and CPU costs on
// `ranks` ranks (the first ranks of the profile's node layout); scheme Auto: the one CostModel::choose picks.
struct AttentionCost {
  SpScheme scheme = SpScheme::Auto;  // what runs
  double total_s = 0;                // the call
  double compute_s = 0;              // the block kernel alone
  double merge_s = 0;                // of total_s: the merges (CPU profiles)
};
AttentionCost attentionCost(const SpShape& shape, int ranks, SpScheme scheme, const SpAttentionOptions& options,
                            const Profile& p);
// The cost model of the SP schemes with the profile's link (bandwidth in fp32 elements: x 4 / act_bytes), kernel
// rate and CPU costs, as predict() and attentionCost() use it.
CostModelParams costModelParams(const Profile& p, bool inter_nodes);

// The built-in profiles (profiles.cc): a10x4-pcie, l40x4-pcie, l40x8-pcie, a100x8-nvswitch, h100x8-nvswitch,
// ascend910bx8-hccs, mi300xx8-xgmi, a100x8-ib100, a100x8-ib200, h100x8-ib400 (2 nodes; --nodes 2..8),
// cpu-1gbe, cpu-10gbe (4 nodes of one rank).
const std::vector<Profile>& builtinProfiles();
// A built-in profile by name; InvalidArgument listing the valid names otherwise.
const Profile& profileByName(const std::string& name);
std::vector<std::string> profileNames();
// The profile with `nodes` nodes (multi-node profiles: 1..64); InvalidArgument otherwise.
Profile withNodes(const Profile& p, int nodes);
// The profile with every link's bandwidth multiplied by `scale` (> 0) (sweeps over link rates).
Profile withLinkScale(const Profile& p, double scale);

// "This machine as calibrated" (collective over comm): CostModel::calibrate's link and kernel speed, a measured
// memory copy rate and INT4 codec rate; one node of comm.size() ranks, fp32 activations, efficiencies 1 (the
// figures are achieved rates). Same result on every rank.
Profile calibratedProfile(Communicator& comm, double weight_bytes = 0.625);

// Built-in model shapes: llama-2-7b, llama-2-13b, llama-2-70b, llama-3-8b, llama-3-70b. InvalidArgument listing
// them for another name.
LlamaConfig builtinModel(const std::string& name);
std::vector<std::string> builtinModelNames();

struct Workload {
  int tp = 1, sp = 1;
  int batch = 1;
  int64_t prompt = 1024;      // prompt tokens per sequence
  int64_t decode = 128;       // generated tokens per sequence (decode rate at the mean context)
  std::string comm = "bf16";  // TP all-reduce, a --comm name (comm_setting.h): exact, bf16, int8, int4, auto...
  int group_size = 128;
  int spikes = 0;  // spike reserving of the low-bit codecs (bytes; the papers' codecs have none)
  SpScheme scheme = SpScheme::Auto;
  SeqLayout layout = SeqLayout::Zigzag;
};

// Cost of one all-reduce of `count` values on `ranks` ranks (the first ranks of a node layout of the profile).
struct AllreduceCost {
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;  // what runs (Auto resolved)
  std::string name;                                         // e.g. flash-int4, twostep-bf16, hier-bf16-int4
  uint64_t wire_bytes = 0;                                  // per rank, allreduceWireBytes
  uint64_t inter_bytes = 0;                                 // of which to other nodes, allreduceInterNodeBytes
  int rounds = 0;                                           // message rounds
  double comm_s = 0;                                        // latency + transfer (+ transport CPU)
  double codec_s = 0;                                       // quantize / dequantize / reduce
  double link_s = 0;                                        // latency + transfer on the links alone
  double transport_cpu_s = 0;  // the transport's CPU per byte and per rendezvous message (CPU profiles)
  int messages = 0;            // messages one rank sends
  int stages = 1;              // pipelined pieces the CPU work overlaps the links over (CPU profiles)
  // comm_s + codec_s = the all-reduce. GPU profiles (cores 0): comm_s = link_s + transport_cpu_s, codec_s
  // not overlapped. CPU profiles: max(link_s, P) + min(link_s, codec_s) / stages with P = codec_s +
  // transport_cpu_s (the transport's CPU streams with the link; the codec hides behind it but for one piece).
};
// `options` as the engine would hold them (commAllreduceOptions); the link model and node layout are filled in
// from the profile here, as a calibrated engine on that machine would.
AllreduceCost allreduceCost(size_t count, int ranks, const AllreduceOptions& options, const Profile& p);
// The options of Workload::comm with the profile's link and layout for a TP group of `ranks`.
AllreduceOptions workloadAllreduceOptions(const Workload& w, const Profile& p, int ranks);

struct Prediction {
  // Inputs, resolved.
  std::string profile, model, comm;
  int tp = 1, sp = 1, batch = 1;
  int64_t prompt = 0, decode = 0;
  // Prefill (time to first token), seconds on the slowest rank, and its parts (compute + comm + quant = prefill).
  double prefill_s = 0;
  double compute_s = 0;  // linear layers, attention kernels, output head
  double comm_s = 0;     // TP all-reduce transfers + exposed SP attention communication
  double quant_s = 0;    // all-reduce codec work
  double linear_s = 0, attention_s = 0, tp_comm_s = 0, sp_comm_s = 0;  // parts of compute_s and comm_s
  // Decode.
  double decode_step_s = 0;  // one token for every sequence of the batch
  double decode_tok_s = 0;   // batch / decode_step_s
  double decode_comm_s = 0;  // of decode_step_s: all-reduces, pass-Q, token choice
  // Bytes one rank sends in the prefill, and of them to other nodes.
  uint64_t bytes_per_rank = 0, inter_node_bytes_per_rank = 0;
  double memory_bytes = 0;  // weights + KV cache of prompt + decode tokens, per rank
  bool fits = true;         // memory_bytes <= 90% of the device memory
  // What ran, and what the library's Auto would pick on that hardware (SP: CostModel::choose with the profile's
  // link; TP: allreduceAutoChoice with the profile's link model and node layout).
  std::string allreduce;             // the TP all-reduce that ran, e.g. flash-int4
  SpScheme scheme = SpScheme::Auto;  // the SP scheme (Auto when sp == 1)
  SpScheme auto_scheme = SpScheme::Auto;
  std::string auto_allreduce;
  std::vector<double> scheme_s;  // exposed SP time of the prefill with TokenRing, RingKV, Ulysses, AllGatherKV
};

// Throws InvalidArgument naming the bad value (tp * sp more than the profile's ranks, tp above the heads, a TP
// group that neither divides nor is a multiple of the node, an unknown codec, non-positive sizes).
Prediction predict(const LlamaConfig& model, const Profile& profile, const Workload& w);

// The grids tp x sp with tp, sp powers of two, tp <= heads and tp * sp <= ranks (ranks = 0: the profile's).
std::vector<std::pair<int, int>> grids(const LlamaConfig& model, const Profile& profile, int ranks = 0);

// A published figure beside the model's prediction (paperFigures(); papers.cc says how each is computed).
struct PaperFigure {
  std::string name;      // short id
  std::string source;    // paper and where in it
  std::string setup;     // what the model was asked
  std::string unit;      // "ms", "x", "%"
  double published = 0;  // the paper's figure (a lower bound where the paper says ">")
  double predicted = 0;  // the model's
  double ratio() const { return predicted / published; }
  bool reproduced() const { return ratio() >= 0.75 && ratio() <= 1.25; }  // within +-25%
  // For a miss: which assumption of the model it contradicts, and the link bandwidth scale that would match
  // (0 when no scale in [1/64, 64] does).
  std::string note;
  double implied_link_scale = 0;
};
std::vector<PaperFigure> paperFigures();

}  // namespace flashring::sim

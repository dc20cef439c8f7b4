// All-reduce, the low-bit codecs and their wire sizes for Python (flashring/allreduce.h, flashring/quant.h).
#include "flashring/allreduce.h"

#include <fmt/format.h>
#include <nanobind/stl/string.h>

#include <chrono>

#include "common.h"
#include "flashring/error.h"
#include "flashring/quant.h"

namespace flashring::py {

namespace {

void checkSpan(const FloatArray& a, const char* name, const FloatArray& b, const char* bname) {
  if (a.count != b.count)
    throw InvalidArgument(fmt::format("{}: {} elements, but {} has {}", bname, b.count, name, a.count));
}

}  // namespace

void bindAllreduce(nb::module_& m) {
  nb::class_<quant::Config>(m, "QuantConfig", "Group-wise codec settings (flashring/quant.h).")
      .def(nb::init<>())
      .def_rw("bits", &quant::Config::bits)
      .def_rw("group_size", &quant::Config::group_size)
      .def_rw("symmetric", &quant::Config::symmetric)
      .def_rw("spikes", &quant::Config::spikes)
      .def_rw("rotate", &quant::Config::rotate)
      .def_rw("clip", &quant::Config::clip)
      .def("validate", [](const quant::Config& c) { quant::validate(c); })
      .def("describe", [](const quant::Config& c) { return quant::describe(c); })
      .def("encoded_bytes", [](const quant::Config& c, size_t n) {
        quant::validate(c);
        return quant::encodedBytes(n, c);
      });

  nb::class_<AllreduceOptions>(m, "AllreduceOptions", "Options of one all-reduce (flashring/allreduce.h).")
      .def(nb::init<>())
      .def_static(
          "from_name",
          [](const std::string& name, int group_size, int spikes, bool symmetric, bool rotate, bool clip) {
            AllreduceOptions base;
            for (quant::Config* c : {&base.reduce_scatter, &base.all_gather}) {
              c->group_size = group_size;
              c->spikes = spikes;
              c->symmetric = symmetric;
              c->rotate = rotate;
              c->clip = clip;
            }
            AllreduceOptions o = allreduceOptionsFromName(name, base);
            quant::validate(o.reduce_scatter);
            quant::validate(o.all_gather);
            return o;
          },
          nb::arg("name"), nb::arg("group_size"), nb::arg("spikes"), nb::arg("symmetric"), nb::arg("rotate"),
          nb::arg("clip"))
      .def_prop_ro("algorithm", [](const AllreduceOptions& o) { return allreduceAlgorithmName(o.algorithm); })
      .def_rw("reduce_scatter", &AllreduceOptions::reduce_scatter)
      .def_rw("all_gather", &AllreduceOptions::all_gather)
      .def_rw("chunk_elems", &AllreduceOptions::chunk_elems)
      .def_rw("auto_threshold_bytes", &AllreduceOptions::auto_threshold_bytes)
      .def_rw("oneshot_threshold_bytes", &AllreduceOptions::oneshot_threshold_bytes)
      .def_prop_rw(
          "ranks_per_node", [](const AllreduceOptions& o) { return o.hier.ranks_per_node; },
          [](AllreduceOptions& o, int k) {
            if (k < 0) throw InvalidArgument("ranks_per_node: must be >= 0");
            o.hier.ranks_per_node = k;
          })
      .def_rw("check_sizes", &AllreduceOptions::check_sizes)
      .def_rw("native_blocking", &AllreduceOptions::native_blocking)
      .def("set_link",
           [](AllreduceOptions& o, double latency_s, double bandwidth_Bps, bool mesh) {
             o.link.latency_s = latency_s;
             o.link.bandwidth_Bps = bandwidth_Bps;
             o.link.mesh = mesh;
           })
      .def("auto_choice", [](const AllreduceOptions& o, size_t count,
                             int ranks) { return allreduceAlgorithmName(allreduceAutoChoice(count, ranks, o)); })
      .def("wire_bytes",
           [](const AllreduceOptions& o, size_t count, int ranks) {
             if (ranks < 1) throw InvalidArgument("wire_bytes: ranks must be at least 1");
             return allreduceWireBytes(count, ranks, o);
           })
      .def("__repr__", [](const AllreduceOptions& o) {
        return fmt::format("AllreduceOptions(algorithm={}, reduce_scatter={}, all_gather={})",
                           allreduceAlgorithmName(o.algorithm), quant::describe(o.reduce_scatter),
                           quant::describe(o.all_gather));
      });

  nb::class_<AllreduceStats>(m, "AllreduceStats", "What one all-reduce did on this rank.")
      .def_prop_ro("algorithm", [](const AllreduceStats& s) { return allreduceAlgorithmName(s.algorithm); })
      .def_ro("wire_bytes", &AllreduceStats::wire_bytes)
      .def_ro("codec_s", &AllreduceStats::codec_s)
      .def_ro("wait_s", &AllreduceStats::wait_s)
      .def("__repr__", [](const AllreduceStats& s) {
        return fmt::format("AllreduceStats(algorithm='{}', wire_bytes={}, codec_s={:.6f}, wait_s={:.6f})",
                           allreduceAlgorithmName(s.algorithm), s.wire_bytes, s.codec_s, s.wait_s);
      });

  m.def(
      "all_reduce",
      [](Comm& c, nb::ndarray<> x, const AllreduceOptions& o) {
        Communicator& comm = c.get();
        const FloatArray a = floatArray(x, "x");
        AllreduceStats stats;
        {
          nb::gil_scoped_release release;
          std::vector<float> scratch;
          std::span<float> data = toF32(a, scratch);
          allreduce(comm, data, o, &stats);
          fromF32(data, a);
        }
        return stats;
      },
      nb::arg("comm"), nb::arg("x").noconvert(), nb::arg("options"));

  // The C++ baseline of the Python-call overhead benchmark (bench/python/allreduce_overhead.py): `iters`
  // all-reduces of the fp32 array x in a C++ loop, the GIL released once; returns the seconds they took.
  m.def(
      "allreduce_loop",
      [](Comm& c, nb::ndarray<> x, const AllreduceOptions& o, int iters) {
        Communicator& comm = c.get();
        const FloatArray a = floatArray(x, "x");
        if (a.dtype != DType::F32) throw InvalidArgument("x: allreduce_loop takes float32");
        nb::gil_scoped_release release;
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i) allreduce(comm, {static_cast<float*>(a.data), a.count}, o);
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      },
      nb::arg("comm"), nb::arg("x").noconvert(), nb::arg("options"), nb::arg("iters"));

  m.def(
      "all_reduce_with_error",
      [](Comm& c, nb::ndarray<> x, nb::ndarray<> error, const AllreduceOptions& o) {
        Communicator& comm = c.get();
        const FloatArray a = floatArray(x, "x");
        const FloatArray e = floatArray(error, "error");
        checkSpan(a, "x", e, "error");
        if (e.dtype != DType::F32) throw InvalidArgument("error: must be float32 (it holds fp32 residuals)");
        if (a.count > 0 && a.data == e.data) throw InvalidArgument("error: must not be the same memory as x");
        AllreduceStats stats;
        {
          nb::gil_scoped_release release;
          std::vector<float> scratch;
          std::span<float> data = toF32(a, scratch);
          allreduceWithError(comm, data, {static_cast<float*>(e.data), e.count}, o, &stats);
          fromF32(data, a);
        }
        return stats;
      },
      nb::arg("comm"), nb::arg("x").noconvert(), nb::arg("error").noconvert(), nb::arg("options"));

  m.def(
      "quantize",
      [](nb::ndarray<nb::ro> x, const quant::Config& cfg, nb::ndarray<uint8_t, nb::c_contig> out) {
        quant::validate(cfg);
        const FloatArray a = floatArray(x, "x");
        const size_t bytes = quant::encodedBytes(a.count, cfg);
        if (out.size() != bytes)
          throw InvalidArgument(fmt::format("out: {} bytes, the encoding takes {}", out.size(), bytes));
        nb::gil_scoped_release release;
        std::vector<float> scratch;
        const std::span<float> data = toF32(a, scratch);
        if (a.count > 0) quant::quantize(data.data(), a.count, cfg, out.data());
      },
      nb::arg("x").noconvert(), nb::arg("config"), nb::arg("out").noconvert());

  m.def(
      "dequantize",
      [](nb::ndarray<const uint8_t, nb::c_contig> data, const quant::Config& cfg, nb::ndarray<> out) {
        quant::validate(cfg);
        const FloatArray o = floatArray(out, "out");
        const size_t bytes = quant::encodedBytes(o.count, cfg);
        if (data.size() != bytes)
          throw InvalidArgument(fmt::format("data: {} bytes, but {} values take {} with {}", data.size(), o.count,
                                            bytes, quant::describe(cfg)));
        nb::gil_scoped_release release;
        std::vector<float> scratch;
        const std::span<float> values = toF32(o, scratch);
        if (o.count > 0) quant::dequantize(data.data(), o.count, cfg, values.data());
        fromF32(values, o);
      },
      nb::arg("data").noconvert(), nb::arg("config"), nb::arg("out").noconvert());
}

}  // namespace flashring::py

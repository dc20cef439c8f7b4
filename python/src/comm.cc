// Communicators for Python: thread worlds, splits, the interrupt check (Ctrl-C), and the handle type that the
// collectives, attention and engine bindings take.
#include <Python.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "common.h"
#include "flashring/error.h"
#include "flashring/group_comm.h"
#include "flashring/thread_comm.h"

namespace flashring::py {

Communicator& Comm::get() const {
  if (comm == nullptr) throw InvalidArgument("the communicator is closed");
  return *comm;
}

void Comm::close() {
  comm = nullptr;
  owner.reset();
}

namespace {

std::thread::id g_main_thread;

// Called by a blocking wait about every 100 ms (comm.h). Only the main thread receives Ctrl-C in Python;
// elsewhere there is nothing to check. PyErr_CheckSignals runs the Python-level handler; when it raises
// (KeyboardInterrupt by default) the error stays set and errors.cc's translator hands it on unchanged.
bool pythonInterruptCheck() {
  if (std::this_thread::get_id() != g_main_thread) return false;
  if (Py_IsInitialized() == 0) return false;
  nb::gil_scoped_acquire gil;
  return PyErr_CheckSignals() != 0;
}

struct World {
  std::shared_ptr<ThreadWorld> world;
};

std::chrono::milliseconds toMs(double seconds, const char* what) {
  if (!(seconds > 0) || !std::isfinite(seconds))
    throw InvalidArgument(std::string(what) + ": expected a positive number of seconds");
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(seconds * 1000.0)));
}

}  // namespace

void bindComm(nb::module_& m) {
  g_main_thread = std::this_thread::get_id();
  setInterruptCheck(&pythonInterruptCheck);

  nb::class_<Comm>(m, "Comm", "A flashring communicator handle (use flashring.Communicator).")
      .def_prop_ro("rank", [](const Comm& c) { return c.get().rank(); })
      .def_prop_ro("size", [](const Comm& c) { return c.get().size(); })
      .def_prop_ro("transport", [](const Comm& c) { return c.get().transport(); })
      .def_prop_ro("kind", [](const Comm& c) { return c.kind; })
      .def_prop_ro("closed", [](const Comm& c) { return c.comm == nullptr; })
      .def_prop_rw(
          "timeout", [](const Comm& c) { return static_cast<double>(c.get().timeout().count()) / 1000.0; },
          [](Comm& c, double s) { c.get().setTimeout(toMs(s, "timeout")); })
      .def_prop_ro("bytes_sent", [](const Comm& c) { return c.get().bytesSent(); })
      .def("reset_bytes_sent", [](Comm& c) { c.get().resetBytesSent(); })
      .def_prop_ro("node_ids", [](const Comm& c) { return c.get().nodeIds(); })
      .def("set_node_ids", [](Comm& c, std::vector<int> ids) { c.get().setNodeIds(std::move(ids)); })
      .def("set_ranks_per_node", [](Comm& c, int k) { c.get().setRanksPerNode(k); })
      .def_prop_ro("aborted", [](const Comm& c) { return c.get().aborted(); })
      .def("barrier",
           [](Comm& c) {
             Communicator& comm = c.get();
             nb::gil_scoped_release release;
             barrier(comm);
           })
      .def("abort",
           [](Comm& c, const std::string& reason) {
             Communicator& comm = c.get();
             nb::gil_scoped_release release;
             comm.abort(reason);
           })
      .def("close", &Comm::close)
      .def("check_same",
           [](Comm& c, uint64_t value, const std::string& what) {
             Communicator& comm = c.get();
             nb::gil_scoped_release release;
             checkSameOnAllRanks(comm, value, what.c_str());
           })
      .def("allreduce_max",
           [](Comm& c, double v) {
             Communicator& comm = c.get();
             nb::gil_scoped_release release;
             return allreduceMax(comm, v);
           })
      .def("allreduce_sum",
           [](Comm& c, double v) {
             Communicator& comm = c.get();
             nb::gil_scoped_release release;
             return allreduceSumDouble(comm, v);
           })
      .def("split", [](Comm& c, int64_t color, int64_t key) {
        Communicator& parent = c.get();
        std::unique_ptr<GroupCommunicator> g;
        {
          nb::gil_scoped_release release;
          g = split(parent, color, key);
        }
        // The group keeps its parent's owner alive, and itself.
        struct Holder {
          std::shared_ptr<void> parent;
          std::unique_ptr<GroupCommunicator> group;
        };
        auto h = std::make_shared<Holder>(Holder{c.owner, std::move(g)});
        Comm out;
        out.comm = h->group.get();
        out.owner = h;
        out.kind = "group";
        return out;
      });

  nb::class_<World>(m, "ThreadWorldCore", "N ranks as threads of this process (use flashring.thread_world).")
      .def("__init__",
           [](World* w, int n) {
             if (n < 1) throw InvalidArgument("thread_world: n must be at least 1");
             new (w) World{std::make_shared<ThreadWorld>(n)};
           })
      .def_prop_ro("size", [](const World& w) { return w.world->size(); })
      .def("comm",
           [](World& w, int r) {
             if (r < 0 || r >= w.world->size())
               throw InvalidArgument("thread world: rank " + std::to_string(r) + " out of range");
             Comm c;
             c.comm = &w.world->communicator(r);
             c.owner = w.world;
             c.kind = "thread";
             return c;
           })
      .def("abort", [](World& w, const std::string& reason) {
        nb::gil_scoped_release release;
        w.world->abort(reason);
      });
}

}  // namespace flashring::py

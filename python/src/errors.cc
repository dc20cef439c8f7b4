// flashring's typed errors as Python exceptions, each instance carrying `.rank` (-1 outside a communicator):
//   Error(RuntimeError)
//     InvalidArgument(Error, ValueError)     bad argument, size mismatch across ranks, wrong dtype or layout
//       FormatError(InvalidArgument)         a truncated or corrupt GGUF file
//     TimeoutError(Error, TimeoutError)      a wait ran past its deadline
//     AbortedError(Error)                    the communicator was aborted (by this rank or a peer)
//     TransportError(Error)                  the transport itself failed
// InterruptedError (a wait ended by Ctrl-C) becomes KeyboardInterrupt.
#include <Python.h>

#include <exception>
#include <new>
#include <stdexcept>

#include "common.h"
#include "flashring/error.h"
#include "flashring/gguf.h"

namespace flashring::py {

namespace {

PyObject* g_error = nullptr;
PyObject* g_invalid = nullptr;
PyObject* g_format = nullptr;
PyObject* g_timeout = nullptr;
PyObject* g_aborted = nullptr;
PyObject* g_transport = nullptr;

PyObject* newException(nb::module_& m, const char* name, PyObject* bases, const char* doc) {
  const std::string qualified = std::string("flashring.") + name;
  PyObject* cls = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases, nullptr);
  if (cls == nullptr) throw nb::python_error();
  Py_DECREF(bases);
  m.attr(name) = nb::handle(cls);
  return cls;
}

void raise(PyObject* cls, const flashring::Error& e) {
  PyObject* inst = PyObject_CallFunction(cls, "s", e.what());
  if (inst == nullptr) return;  // the call's own error stands
  PyObject* rank = PyLong_FromLong(e.rank());
  if (rank != nullptr) {
    PyObject_SetAttrString(inst, "rank", rank);
    Py_DECREF(rank);
  }
  PyErr_SetObject(cls, inst);
  Py_DECREF(inst);
}

}  // namespace

void bindErrors(nb::module_& m) {
  g_error = newException(m, "Error", PyTuple_Pack(1, PyExc_RuntimeError),
                         "Base of flashring's errors; `.rank` is the rank that raised it (-1 outside a communicator).");
  g_invalid = newException(m, "InvalidArgument", PyTuple_Pack(2, g_error, PyExc_ValueError),
                           "An argument that cannot work: a bad option, wrong dtype, layout or device, an empty or "
                           "misaligned buffer, sizes that differ across ranks.");
  g_format = newException(m, "FormatError", PyTuple_Pack(1, g_invalid), "A truncated or corrupt GGUF file.");
  g_timeout = newException(m, "TimeoutError", PyTuple_Pack(2, g_error, PyExc_TimeoutError),
                           "A wait ran past the communicator's timeout; the message names the peer, tag and bytes.");
  g_aborted = newException(m, "AbortedError", PyTuple_Pack(1, g_error),
                           "The communicator was aborted (by this rank or a peer); the message holds the reason.");
  g_transport =
      newException(m, "TransportError", PyTuple_Pack(1, g_error), "The transport itself failed (an MPI error).");
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const flashring::InterruptedError&) {
      // Ctrl-C: the interrupt check consumed the signal (comm.cc); raise what Python would have raised.
      if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
    } catch (const flashring::gguf::FormatError& e) {
      raise(g_format, e);
    } catch (const flashring::InvalidArgument& e) {
      raise(g_invalid, e);
    } catch (const flashring::TimeoutError& e) {
      raise(g_timeout, e);
    } catch (const flashring::AbortedError& e) {
      raise(g_aborted, e);
    } catch (const flashring::TransportError& e) {
      raise(g_transport, e);
    } catch (const flashring::Error& e) {
      raise(g_error, e);
    }
  });
}

}  // namespace flashring::py

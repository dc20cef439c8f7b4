// Typed errors of flashring.
//
// Every failure that a caller can act on is one of these exceptions. Each carries the rank that raised it
// (or -1 outside a communicator) so that a message read on any rank says where the problem began. A
// communicator turns a failure on one rank into an AbortedError on every rank (see comm.h), so that no
// rank is left waiting for a peer that will never answer.
#pragma once

#include <stdexcept>
#include <string>

namespace flashring {

class Error : public std::runtime_error {
 public:
  Error(const std::string& what, int rank = -1) : std::runtime_error(what), rank_(rank) {}
  int rank() const { return rank_; }

 private:
  int rank_;
};

// A caller passed something that cannot work: a bad option, an empty or misaligned buffer, sizes that do
// not match across ranks.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// A wait ran past its deadline. The message names what was being waited for (peer, tag, bytes).
class TimeoutError : public Error {
 public:
  using Error::Error;
};

// The communicator was aborted, by this rank or by a peer; the message holds the reason and its origin.
class AbortedError : public Error {
 public:
  using Error::Error;
};

// A wait was interrupted by the process's interrupt check (comm.h: setInterruptCheck; the Python package's
// Ctrl-C). The communicator has been aborted, so the other ranks' waits end too (with AbortedError).
class InterruptedError : public Error {
 public:
  using Error::Error;
};

// The transport itself failed (an MPI error code, a lost peer).
class TransportError : public Error {
 public:
  using Error::Error;
};

// A device runtime call failed (the CUDA error is named), or a device operation was asked for where no device
// is usable (no GPU, no driver, or flashring built without CUDA).
class DeviceError : public Error {
 public:
  using Error::Error;
};

}  // namespace flashring

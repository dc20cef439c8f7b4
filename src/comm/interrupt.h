// The transports' side of setInterruptCheck (comm.h).
#pragma once

#include "flashring/comm.h"

namespace flashring::detail {

// Calls the installed interrupt check (if any); when it returns true, aborts `comm` ("interrupted on rank r")
// and throws InterruptedError. Transports call it about every kInterruptPeriod while a wait blocks, never
// while holding a lock that abort() takes.
void pollInterrupt(Communicator& comm);

}  // namespace flashring::detail

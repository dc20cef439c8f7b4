// Tag namespaces of flashring's own collectives.
//
// A tag is space | (step & kStepMask). Every collective owns a space, and each direction of a
// bidirectional exchange owns its own, so two streams in flight at once can never match each other's
// messages. Messages with equal (peer, tag) match in posting order, so reusing a tag for the same step of
// consecutive calls is safe as long as every rank issues collectives in the same order.
#pragma once

#include "flashring/comm.h"

namespace flashring::tags {

inline constexpr Tag kStepBits = 10;
inline constexpr Tag kStepMask = (1 << kStepBits) - 1;

enum Space : Tag {
  kHelpers = 1 << kStepBits,  // barrier, allreduceMax, ...
  kRingReduceScatter = 2 << kStepBits,
  kRingAllGather = 3 << kStepBits,
  kTwoStepScatter = 4 << kStepBits,
  kTwoStepGather = 5 << kStepBits,
  kHierScatter = 6 << kStepBits,        // hierarchical all-reduce: the intra-node reduce-scatter
  kHierGather = 7 << kStepBits,         // and all-gather
  kHierInterScatter = 15 << kStepBits,  // hierarchical all-reduce: across nodes, reduce-scatter (or one-shot)
  kHierInterGather = 16 << kStepBits,   // and all-gather
  kSpForward = 8 << kStepBits,          // sequence-parallel attention: Q / KV forward
  kSpBackward = 9 << kStepBits,         // sequence-parallel attention: results back
  kSpAllToAll = 10 << kStepBits,
  kEngineGather = 11 << kStepBits,     // engine: small all-gathers (vocab-parallel logits, argmax, NLL)
  kEngineDecodeQ = 12 << kStepBits,    // engine decode under SP: the new token's Q, passed along the ring
  kEngineDecodeOut = 13 << kStepBits,  // engine decode under SP: partial (out, lse) straight back to the owner
  kEngineToken = 14 << kStepBits,      // engine: the chosen next token, owner group to the other SP groups
  kTokenChoice = 24 << kStepBits,      // chooseToken / gatherLogits over a vocabulary-parallel head (sampling.h)
  kBootstrap = 25 << kStepBits,        // setting up another transport over this one (NcclCommunicator::bootstrap)
};
static_assert((31 << kStepBits) + kStepMask <= kMaxTag, "tag spaces must fit MPI's guaranteed tag range");

constexpr Tag make(Space space, int step) { return static_cast<Tag>(space | (step & kStepMask)); }

}  // namespace flashring::tags

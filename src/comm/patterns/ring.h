// Ring index arithmetic, free of any transport (UCC patterns/ring.h).
#pragma once

namespace flashring::ring {

// (r + k) mod n for any integer k, also negative.
constexpr int wrap(int r, int k, int n) { return ((r + k) % n + n) % n; }
constexpr int next(int r, int n) { return wrap(r, 1, n); }
constexpr int prev(int r, int n) { return wrap(r, -1, n); }

// Ring reduce-scatter: at step s (0-based, n-1 steps) rank r sends the partial sum of chunk
// sendChunk(r, s) to next(r) and adds what it receives from prev(r) into chunk recvChunk(r, s). After
// n-1 steps rank r holds the full sum of chunk ownedChunk(r).
constexpr int rsSendChunk(int r, int s, int n) { return wrap(r, -s - 1, n); }
constexpr int rsRecvChunk(int r, int s, int n) { return wrap(r, -s - 2, n); }
constexpr int ownedChunk(int r, int /*n*/) { return r; }
// Ring all-gather: at step s rank r forwards chunk agSendChunk(r, s) and receives agRecvChunk(r, s).
constexpr int agSendChunk(int r, int s, int n) { return wrap(r, -s, n); }
constexpr int agRecvChunk(int r, int s, int n) { return wrap(r, -s - 1, n); }

}  // namespace flashring::ring

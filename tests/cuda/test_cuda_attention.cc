// The CUDA block attention and merge (flashring/cuda/attention.h) against the CPU kernels. Skips without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "cuda_test_util.h"
#include "flashring/attention.h"
#include "flashring/cuda/attention.h"
#include "flashring/cuda/runtime.h"
#include "flashring/error.h"
#include "flashring/quant.h"

namespace flashring {
namespace {

using testing::randn;

TEST(CudaAttention, ShapesAreCheckedWithoutADevice) {
  AttentionShape s{1, 4, 4, 2, 2, 512};
  float x = 0;
  EXPECT_THROW(cuda::blockAttention(&x, &x, &x, DType::F32, s, {}, &x, &x), InvalidArgument);  // head_dim > 256
  s.head_dim = 64;
  s.kv_heads = 3;  // heads % kv_heads != 0
  EXPECT_THROW(cuda::blockAttention(&x, &x, &x, DType::F32, s, {}, &x, &x), InvalidArgument);
  EXPECT_THROW(cuda::mergeAttention(&x, &x, &x, &x, -1, 1, 1), InvalidArgument);
}

TEST(CudaAttention, BlockKernelMatchesCpu) {
  REQUIRE_CUDA_DEVICE();
  const AttentionShape s{2, 64, 96, 8, 2, 128};
  BlockAttentionOptions o;
  o.causal = true;
  o.q_offset = 64;
  o.k_offset = 16;
  const size_t nq = size_t(s.batch) * s.q_len * s.heads * s.head_dim;
  const size_t nk = size_t(s.batch) * s.kv_len * s.kv_heads * s.head_dim;
  const size_t nl = size_t(s.batch) * s.q_len * s.heads;
  const auto q = randn(nq, 1), k = randn(nk, 2), v = randn(nk, 3);
  std::vector<float> out(nq), lse(nl), ref(nq), ref_lse(nl);
  blockAttention(q.data(), k.data(), v.data(), s, o, ref.data(), ref_lse.data());
  cuda::DeviceBuffer dq(nq * 4), dk(nk * 4), dv(nk * 4), dout(nq * 4), dl(nl * 4);
  dq.upload(q.data(), nq * 4);
  dk.upload(k.data(), nk * 4);
  dv.upload(v.data(), nk * 4);
  cuda::blockAttention(dq.data(), dk.data(), dv.data(), DType::F32, s, o, dout.data(), static_cast<float*>(dl.data()));
  cuda::synchronize();
  dout.download(out.data(), nq * 4);
  dl.download(lse.data(), nl * 4);
  for (size_t i = 0; i < nq; ++i) ASSERT_NEAR(out[i], ref[i], 1e-4f) << i;
  for (size_t i = 0; i < nl; ++i) ASSERT_NEAR(lse[i], ref_lse[i], 1e-4f) << i;

  // bf16 inputs: against the CPU kernel on the same (rounded) values.
  std::vector<uint16_t> qb(nq), kb(nk), vb(nk);
  std::vector<float> qr(nq), kr(nk), vr(nk);
  for (size_t i = 0; i < nq; ++i) qr[i] = quant::bf16ToFloat(qb[i] = quant::floatToBf16(q[i]));
  for (size_t i = 0; i < nk; ++i) kr[i] = quant::bf16ToFloat(kb[i] = quant::floatToBf16(k[i]));
  for (size_t i = 0; i < nk; ++i) vr[i] = quant::bf16ToFloat(vb[i] = quant::floatToBf16(v[i]));
  blockAttention(qr.data(), kr.data(), vr.data(), s, o, ref.data(), ref_lse.data());
  dq.upload(qb.data(), nq * 2);
  dk.upload(kb.data(), nk * 2);
  dv.upload(vb.data(), nk * 2);
  cuda::blockAttention(dq.data(), dk.data(), dv.data(), DType::BF16, s, o, dout.data(), static_cast<float*>(dl.data()));
  cuda::synchronize();
  std::vector<uint16_t> ob(nq);
  dout.download(ob.data(), nq * 2);
  dl.download(lse.data(), nl * 4);
  for (size_t i = 0; i < nq; ++i) ASSERT_NEAR(quant::bf16ToFloat(ob[i]), ref[i], 1e-2f) << i;  // out rounded to bf16
  for (size_t i = 0; i < nl; ++i) ASSERT_NEAR(lse[i], ref_lse[i], 1e-4f) << i;
}

TEST(CudaAttention, MergeMatchesCpu) {
  REQUIRE_CUDA_DEVICE();
  const int rows = 300, heads = 4, d = 64;
  const size_t pairs = size_t(rows) * heads;
  auto oa = randn(pairs * d, 4), ob = randn(pairs * d, 5), la = randn(pairs, 6), lb = randn(pairs, 7);
  la[3] = -INFINITY;
  lb[5] = -INFINITY;
  auto cpu_o = oa, cpu_l = la;
  mergeAttention(cpu_o.data(), cpu_l.data(), ob.data(), lb.data(), rows, heads, d);
  cuda::DeviceBuffer doa(oa.size() * 4), dob(ob.size() * 4), dla(pairs * 4), dlb(pairs * 4);
  doa.upload(oa.data(), oa.size() * 4);
  dob.upload(ob.data(), ob.size() * 4);
  dla.upload(la.data(), pairs * 4);
  dlb.upload(lb.data(), pairs * 4);
  cuda::mergeAttention(static_cast<float*>(doa.data()), static_cast<float*>(dla.data()),
                       static_cast<const float*>(dob.data()), static_cast<const float*>(dlb.data()), rows, heads, d);
  cuda::synchronize();
  doa.download(oa.data(), oa.size() * 4);
  dla.download(la.data(), pairs * 4);
  for (size_t i = 0; i < oa.size(); ++i) ASSERT_NEAR(oa[i], cpu_o[i], 1e-6f) << i;
  for (size_t p = 0; p < pairs; ++p) ASSERT_NEAR(la[p], cpu_l[p], 1e-5f) << p;
}

}  // namespace
}  // namespace flashring

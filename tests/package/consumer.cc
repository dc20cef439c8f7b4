// Links against an installed flashring and runs a 3-rank all-reduce; exits non-zero on a wrong sum.
#include <flashring/allreduce.h>
#include <flashring/thread_comm.h>

#include <cstdio>
#include <vector>

int main() {
  int bad = 0;
  flashring::runThreadRanks(3, [&](flashring::Communicator& comm) {
    std::vector<float> x(1000, static_cast<float>(comm.rank() + 1));
    flashring::allreduce(comm, x, flashring::allreduceOptionsFromName("flash-int8"));
    for (float v : x)
      if (v != 6.f) bad = 1;  // constant groups are exact: 1 + 2 + 3
  });
  std::printf("consumer: %s\n", bad ? "wrong sum" : "ok");
  return bad;
}

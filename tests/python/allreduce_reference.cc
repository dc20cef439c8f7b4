// The C++ API's all-reduce on given inputs, for the Python package's tests (python/tests/test_allreduce.py
// checks that flashring.all_reduce leaves the same bits):
//   flashring_py_reference ALGO RANKS COUNT IN OUT [GROUP_SIZE SPIKES SYMMETRIC ROTATE CLIP]
// IN holds RANKS x COUNT float32 (rank-major, little-endian), OUT receives the same layout after the
// all-reduce on RANKS thread ranks. Exits 1 with a message on any error.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

#include "flashring/allreduce.h"
#include "flashring/thread_comm.h"

int main(int argc, char** argv) {
  try {
    if (argc != 6 && argc != 11) {
      std::fprintf(stderr, "usage: %s ALGO RANKS COUNT IN OUT [GROUP_SIZE SPIKES SYMMETRIC ROTATE CLIP]\n", argv[0]);
      return 2;
    }
    const std::string algo = argv[1];
    const int ranks = std::atoi(argv[2]);
    const size_t count = std::strtoull(argv[3], nullptr, 10);
    flashring::AllreduceOptions base;
    if (argc == 11)
      for (flashring::quant::Config* c : {&base.reduce_scatter, &base.all_gather}) {
        c->group_size = std::atoi(argv[6]);
        c->spikes = std::atoi(argv[7]);
        c->symmetric = std::atoi(argv[8]) != 0;
        c->rotate = std::atoi(argv[9]) != 0;
        c->clip = std::atoi(argv[10]) != 0;
      }
    const flashring::AllreduceOptions options = flashring::allreduceOptionsFromName(algo, base);
    std::vector<float> data(static_cast<size_t>(ranks) * count);
    std::ifstream in(argv[4], std::ios::binary);
    in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
    if (!in)
      throw std::runtime_error(std::string("cannot read ") + std::to_string(data.size()) + " floats from " + argv[4]);
    flashring::runThreadRanks(ranks, [&](flashring::Communicator& comm) {
      flashring::allreduce(comm, {data.data() + static_cast<size_t>(comm.rank()) * count, count}, options);
    });
    std::ofstream out(argv[5], std::ios::binary);
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
    return out ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flashring_py_reference: %s\n", e.what());
    return 1;
  }
}

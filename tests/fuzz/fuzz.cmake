# The GGUF reader's fuzz target (tests/fuzz/fuzz_gguf.cc), included from tests/CMakeLists.txt.
#
# Always: flashring_fuzz_gguf_replay, the same LLVMFuzzerTestOneInput built with the normal compiler and
# a small main, replays the regression corpus (corpus/gguf: small valid and corrupt seeds plus every
# crasher found so far) as CTest fuzz.gguf_corpus.
# With FLASHRING_BUILD_FUZZ=ON (clang only; `make fuzz` configures build-fuzz that way, with the whole
# build instrumented by -fsanitize=fuzzer-no-link,address,undefined): flashring_fuzz_gguf, the libFuzzer
# binary.
option(FLASHRING_BUILD_FUZZ "Build the libFuzzer GGUF target (needs clang with libFuzzer)" OFF)

set(FLASHRING_FUZZ_DIR ${CMAKE_CURRENT_LIST_DIR})
add_executable(flashring_fuzz_gguf_replay ${FLASHRING_FUZZ_DIR}/fuzz_gguf.cc ${FLASHRING_FUZZ_DIR}/fuzz_replay_main.cc)
target_link_libraries(flashring_fuzz_gguf_replay PRIVATE flashring flashring_flags)
add_test(NAME fuzz.gguf_corpus COMMAND flashring_fuzz_gguf_replay ${FLASHRING_FUZZ_DIR}/corpus/gguf)
set_tests_properties(fuzz.gguf_corpus PROPERTIES LABELS fuzz TIMEOUT 300 PASS_REGULAR_EXPRESSION "replayed [1-9]")

if(FLASHRING_BUILD_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "FLASHRING_BUILD_FUZZ needs clang (libFuzzer); configure with CXX=clang++ (see `make fuzz`)")
  endif()
  add_executable(flashring_fuzz_gguf ${FLASHRING_FUZZ_DIR}/fuzz_gguf.cc)
  target_link_libraries(flashring_fuzz_gguf PRIVATE flashring flashring_flags)
  target_compile_options(flashring_fuzz_gguf PRIVATE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
  target_link_options(flashring_fuzz_gguf PRIVATE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
endif()

# The GGUF reader's fuzz target (tests/fuzz/fuzz_gguf.cc), included from tests/CMakeLists.txt.
#
# Always: flashring_fuzz_gguf_replay, the same LLVMFuzzerTestOneInput built with the normal compiler and
# a small main, replays the regression corpus (corpus/gguf: small valid and corrupt seeds plus every
# crasher found so far) as CTest fuzz.gguf_corpus.
# With FLASHRING_BUILD_FUZZ=ON (clang only; `make fuzz` configures build-fuzz that way): flashring_fuzz_gguf,
# the libFuzzer binary, built from the GGUF sources and the dequantization kernels they reach (not the whole
# library) with -fsanitize=fuzzer,address,undefined.
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
  set(FLASHRING_FUZZ_SANITIZE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer)
  # The GGUF sources and what dequantization reaches: the CPU runtime (ISA choice) and the qmm kernels of
  # the types beyond the first six (per-ISA files with their flags, as src/CMakeLists.txt sets them).
  set(FLASHRING_FUZZ_AVX2 ${PROJECT_SOURCE_DIR}/src/engine/dequant_avx2.cc ${PROJECT_SOURCE_DIR}/src/qmm/legacy_avx2.cc
      ${PROJECT_SOURCE_DIR}/src/qmm/kquants_avx2.cc)
  set(FLASHRING_FUZZ_AVX512 ${PROJECT_SOURCE_DIR}/src/qmm/legacy_avx512.cc ${PROJECT_SOURCE_DIR}/src/qmm/kquants_avx512.cc)
  add_executable(flashring_fuzz_gguf ${FLASHRING_FUZZ_DIR}/fuzz_gguf.cc
                 ${PROJECT_SOURCE_DIR}/src/engine/gguf.cc ${PROJECT_SOURCE_DIR}/src/engine/dequant.cc
                 ${PROJECT_SOURCE_DIR}/src/cpu/runtime.cc ${PROJECT_SOURCE_DIR}/src/qmm/dispatch.cc
                 ${PROJECT_SOURCE_DIR}/src/qmm/legacy.cc ${PROJECT_SOURCE_DIR}/src/qmm/kquants.cc
                 ${PROJECT_SOURCE_DIR}/src/qmm/kquants_avx512vnni.cc ${FLASHRING_FUZZ_AVX2} ${FLASHRING_FUZZ_AVX512})
  set_source_files_properties(${FLASHRING_FUZZ_AVX2} TARGET_DIRECTORY flashring_fuzz_gguf
                              PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
  set_source_files_properties(${FLASHRING_FUZZ_AVX512} TARGET_DIRECTORY flashring_fuzz_gguf
                              PROPERTIES COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx2;-mfma;-mf16c")
  set_source_files_properties(${PROJECT_SOURCE_DIR}/src/qmm/kquants_avx512vnni.cc TARGET_DIRECTORY flashring_fuzz_gguf
                              PROPERTIES COMPILE_OPTIONS
                              "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mavx512vnni;-mavx2;-mfma;-mf16c")
  target_include_directories(flashring_fuzz_gguf PRIVATE ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(flashring_fuzz_gguf PRIVATE flashring_flags Threads::Threads ${OpenBLAS_LIBRARIES})
  target_include_directories(flashring_fuzz_gguf SYSTEM PRIVATE ${OpenBLAS_INCLUDE_DIRS})
  target_compile_options(flashring_fuzz_gguf PRIVATE ${FLASHRING_FUZZ_SANITIZE})
  target_link_options(flashring_fuzz_gguf PRIVATE ${FLASHRING_FUZZ_SANITIZE})
endif()

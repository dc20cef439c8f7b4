# Test fixtures written at test time by the Python tools in this directory (tests/tools/README.md):
#   fixtures.models   tiny random LLaMA GGUF models + float64 reference logits and greedy continuations
#                     (make_tiny_models.py) in ${FLASHRING_FIXTURE_DIR}
#   fixtures.smollm2  reference logits of the default model (SmolLM2-135M-Instruct Q4_1) for a fixed
#                     13-token prompt, ${FLASHRING_FIXTURE_DIR}/smollm2.logits.f32 + .json; exits 0 with a
#                     message when the model is absent, and reuses outputs newer than the script and model
#   tools.llama_reference  checks the reference itself (test_llama_reference.py; skips, code 77, without
#                     numpy or gguf)
# Both fixtures.* steps are FIXTURES_SETUP models, which the unit, multirank and MPI tests require. Without
# numpy or the PyPI gguf package the scripts print "skipped: <reason>" and exit 0; the C++ tests that need
# a fixture then skip with a message naming the missing file.
if(NOT Python3_Interpreter_FOUND)
  message(STATUS "flashring: no Python 3 interpreter, so no test fixtures (tests needing them will skip)")
  return()
endif()

set(FLASHRING_TOOLS_DIR ${CMAKE_CURRENT_LIST_DIR})

add_test(NAME fixtures.models
         COMMAND ${Python3_EXECUTABLE} ${FLASHRING_TOOLS_DIR}/make_tiny_models.py ${FLASHRING_FIXTURE_DIR})
set_tests_properties(fixtures.models PROPERTIES FIXTURES_SETUP models LABELS fixtures TIMEOUT 120)

# "Paris is the capital and most populous city of France. It is" in the model's own BPE vocabulary
# (llama_reference.py default --text "..." prints these ids).
set(FLASHRING_SMOLLM2_PROMPT 38634,314,260,3575,284,768,35488,2240,282,4649,30,657,314)
add_test(NAME fixtures.smollm2
         COMMAND ${Python3_EXECUTABLE} ${FLASHRING_TOOLS_DIR}/llama_reference.py default
                 --tokens ${FLASHRING_SMOLLM2_PROMPT} --out ${FLASHRING_FIXTURE_DIR}/smollm2 --skip-missing --reuse)
set_tests_properties(fixtures.smollm2 PROPERTIES FIXTURES_SETUP models LABELS fixtures TIMEOUT 300)

add_test(NAME tools.llama_reference COMMAND ${Python3_EXECUTABLE} ${FLASHRING_TOOLS_DIR}/test_llama_reference.py)
set_tests_properties(tools.llama_reference PROPERTIES LABELS tools TIMEOUT 120 SKIP_RETURN_CODE 77)

# `flashring perplexity --kl-divergence` and `--refine-layers` end to end on a tiny model.
if(TARGET flashring_cli)
  add_test(NAME cli.perplexity
           COMMAND ${Python3_EXECUTABLE} ${FLASHRING_TOOLS_DIR}/test_cli_perplexity.py $<TARGET_FILE:flashring_cli>
                   ${FLASHRING_FIXTURE_DIR} ${CMAKE_BINARY_DIR}/cli-perplexity-test)
  set_tests_properties(cli.perplexity PROPERTIES FIXTURES_REQUIRED models LABELS cli TIMEOUT 300
                       SKIP_RETURN_CODE 77)
endif()

# `flashring simulate` end to end: --paper, --sweep --json, and its errors (no model file needed).
if(TARGET flashring_cli)
  add_test(NAME cli.simulate
           COMMAND ${Python3_EXECUTABLE} ${FLASHRING_TOOLS_DIR}/test_cli_simulate.py $<TARGET_FILE:flashring_cli>
                   ${CMAKE_BINARY_DIR}/cli-simulate-test)
  set_tests_properties(cli.simulate PROPERTIES LABELS cli TIMEOUT 120)
endif()

# `flashring bench allreduce --device cuda`: on a GPU it runs the device all-reduce; without one it must fail with
# the CUDA runtime's reason (or, in a build without CUDA, say so), never crash. ring-* is refused on the device.
if(TARGET flashring_cli)
  add_test(NAME cli.bench_allreduce_cuda
           COMMAND $<TARGET_FILE:flashring_cli> bench allreduce --device cuda -b 64K -e 64K -n 5 -w 1 --ranks 2)
  set_tests_properties(cli.bench_allreduce_cuda PROPERTIES LABELS "cli;cuda" TIMEOUT 120
                       PASS_REGULAR_EXPRESSION "no usable CUDA device|built without CUDA|flash-int4 ")
  add_test(NAME cli.bench_allreduce_cuda_refuses_ring
           COMMAND $<TARGET_FILE:flashring_cli> bench allreduce --device cuda --algos ring-fp32 -n 5)
  set_tests_properties(cli.bench_allreduce_cuda_refuses_ring PROPERTIES LABELS cli TIMEOUT 60
                       PASS_REGULAR_EXPRESSION "does not run on the device yet|built without CUDA")
endif()

# `flashring run --chat` and `--interactive` end to end (test_cli_chat.py): on the default model when it is
# installed (else the tiny fixture), and always on the tiny fixture; with MPI also under 2 MPI ranks.
if(TARGET flashring_cli)
  set(FLASHRING_CHAT_TEST_MPI)
  if(FLASHRING_WITH_MPI AND MPIEXEC_EXECUTABLE)
    set(FLASHRING_CHAT_TEST_MPI --mpiexec ${MPIEXEC_EXECUTABLE})
  endif()
  add_test(NAME cli.chat
           COMMAND ${Python3_EXECUTABLE} ${FLASHRING_TOOLS_DIR}/test_cli_chat.py $<TARGET_FILE:flashring_cli>
                   ${FLASHRING_FIXTURE_DIR} ${CMAKE_BINARY_DIR}/cli-chat-test ${FLASHRING_CHAT_TEST_MPI})
  add_test(NAME cli.chat.tiny
           COMMAND ${Python3_EXECUTABLE} ${FLASHRING_TOOLS_DIR}/test_cli_chat.py $<TARGET_FILE:flashring_cli>
                   ${FLASHRING_FIXTURE_DIR} ${CMAKE_BINARY_DIR}/cli-chat-tiny-test --tiny ${FLASHRING_CHAT_TEST_MPI})
  set_tests_properties(cli.chat cli.chat.tiny PROPERTIES FIXTURES_REQUIRED models LABELS cli TIMEOUT 600
                       SKIP_RETURN_CODE 77)
endif()

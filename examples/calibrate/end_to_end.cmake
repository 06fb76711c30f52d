# End-to-end test of aqua_calibrate on tiny synthetic dumps (cmake -P script, run by ctest).
# Inputs: CALIBRATE, MAKE_DUMP (binaries), WORK_DIR (scratch directory, recreated).
foreach(var CALIBRATE MAKE_DUMP WORK_DIR)
  if(NOT ${var})
    message(FATAL_ERROR "end_to_end.cmake: pass -D${var}=...")
  endif()
endforeach()
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

# Runs a command; checks its exit code (0, or non-zero when EXPECT_FAIL) and, for EXPECT, that
# stdout + stderr match the regular expression. The output lands in the variable named by OUTPUT.
function(run_checked)
  cmake_parse_arguments(R "EXPECT_FAIL" "EXPECT;OUTPUT;EXIT" "COMMAND" ${ARGN})
  execute_process(COMMAND ${R_COMMAND} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(R_EXPECT_FAIL)
    if(rc EQUAL 0)
      message(FATAL_ERROR "expected failure, got success: ${R_COMMAND}\n${out}\n${err}")
    endif()
  elseif(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${R_COMMAND}\n${out}\n${err}")
  endif()
  if(DEFINED R_EXIT AND NOT rc EQUAL R_EXIT)
    message(FATAL_ERROR "expected exit code ${R_EXIT}, got ${rc}: ${R_COMMAND}\n${err}")
  endif()
  if(R_EXPECT AND NOT "${out}${err}" MATCHES "${R_EXPECT}")
    message(FATAL_ERROR "output of ${R_COMMAND} does not match \"${R_EXPECT}\":\n${out}\n${err}")
  endif()
  if(R_OUTPUT)
    set(${R_OUTPUT} "${out}" PARENT_SCOPE)
  endif()
endfunction()

set(train "${WORK_DIR}/train")
set(held "${WORK_DIR}/held")
set(proj "${WORK_DIR}/proj.safetensors")
run_checked(COMMAND "${MAKE_DUMP}" "${train}" --layers 2 --query-heads 4 --kv-heads 2 --rows 200 --d 16 --rank 3 --seed 1)
run_checked(COMMAND "${MAKE_DUMP}" "${held}" --layers 2 --query-heads 4 --kv-heads 2 --rows 100 --d 16 --rank 3 --seed 2)

# Calibrate: the file appears, the tables are printed, progress goes to stderr.
run_checked(COMMAND "${CALIBRATE}" --dumps "${train}" --out "${proj}" --eval "${held}"
            EXPECT "top-k \\|q~\\| dimensions.*k=2 +k=4.*k=16.*mean.*first k dimensions.*eval dumps"
            OUTPUT table)
if(NOT EXISTS "${proj}")
  message(FATAL_ERROR "aqua_calibrate did not write ${proj}")
endif()
# The planted subspace has rank 3: k = 4 of 16 keeps nearly all energy in the first dims.
if(NOT table MATCHES "first k dimensions[^\n]*\nlayer[^\n]*\n0 +[0-9.]+ +0\\.99")
  message(FATAL_ERROR "expected prefix retention >= 0.99 at k = 4 for layer 0:\n${table}")
endif()

# --json: one object per line with the required keys; k = d keeps everything.
run_checked(COMMAND "${CALIBRATE}" --dumps "${train}" --out "${proj}" --json --source queries_and_keys
            OUTPUT json)
string(REPLACE "\n" ";" lines "${json}")
list(FILTER lines EXCLUDE REGEX "^$")
list(LENGTH lines count)
# (2 layers x (2 heads + 1 layer line) + 1 mean) x 16 values of k
if(NOT count EQUAL 112)
  message(FATAL_ERROR "expected 112 JSON lines, got ${count}:\n${json}")
endif()
foreach(line IN LISTS lines)
  if(NOT line MATCHES "^\\{\"dataset\":\"calibration\",\"layer\":([0-9]+|\"mean\"),(\"kv_head\":[0-9]+,)?\"k\":[0-9]+,\"d\":16,\"retention_topk\":[-0-9.e]+,\"retention_prefix\":[-0-9.e]+,\"score_rel_err\":[-0-9.e]+,\"queries\":[0-9]+\\}$")
    message(FATAL_ERROR "malformed JSON line: ${line}")
  endif()
endforeach()
if(NOT json MATCHES "\"layer\":\"mean\",\"k\":16,\"d\":16,\"retention_topk\":1\\.0,\"retention_prefix\":1\\.0")
  message(FATAL_ERROR "retention at k = d must be 1:\n${json}")
endif()

# An existing projection file evaluated on held-out dumps.
run_checked(COMMAND "${CALIBRATE}" --projection "${proj}" --eval "${held}" --json --threads 2
            EXPECT "\"dataset\":\"eval\",\"layer\":\"mean\",\"k\":16")

# Bad input: clear message, non-zero exit.
run_checked(COMMAND "${CALIBRATE}" --dumps "${WORK_DIR}/nope" --out "${proj}" EXPECT_FAIL EXIT 2
            EXPECT "--dumps: cannot open .*nope: No such file or directory")
file(MAKE_DIRECTORY "${WORK_DIR}/empty")
run_checked(COMMAND "${CALIBRATE}" --dumps "${WORK_DIR}/empty" --out "${proj}" EXPECT_FAIL EXIT 1
            EXPECT "has no q_layer0.npy")
file(MAKE_DIRECTORY "${WORK_DIR}/corrupt")
file(COPY "${train}/k_layer0.npy" DESTINATION "${WORK_DIR}/corrupt")
file(WRITE "${WORK_DIR}/corrupt/q_layer0.npy" "not a numpy file at all")
run_checked(COMMAND "${CALIBRATE}" --dumps "${WORK_DIR}/corrupt" --out "${proj}" EXPECT_FAIL EXIT 1
            EXPECT "q_layer0.npy: not a .npy file")
file(MAKE_DIRECTORY "${WORK_DIR}/nokeys")
file(COPY "${train}/q_layer0.npy" DESTINATION "${WORK_DIR}/nokeys")
run_checked(COMMAND "${CALIBRATE}" --dumps "${WORK_DIR}/nokeys" --out "${proj}" EXPECT_FAIL EXIT 1
            EXPECT "k_layer0.npy is missing")
run_checked(COMMAND "${MAKE_DUMP}" "${WORK_DIR}/d8" --layers 1 --d 8)
file(MAKE_DIRECTORY "${WORK_DIR}/mixed")
file(COPY "${train}/q_layer0.npy" DESTINATION "${WORK_DIR}/mixed")
file(COPY "${WORK_DIR}/d8/k_layer0.npy" DESTINATION "${WORK_DIR}/mixed")
run_checked(COMMAND "${CALIBRATE}" --dumps "${WORK_DIR}/mixed" --out "${proj}" EXPECT_FAIL EXIT 1
            EXPECT "k_layer0.npy has d = 8 but .*q_layer0.npy has d = 16")
run_checked(COMMAND "${CALIBRATE}" --projection "${proj}" --eval "${WORK_DIR}/d8" EXPECT_FAIL EXIT 1
            EXPECT "has 1 layers but the projection set has 2")
file(WRITE "${WORK_DIR}/broken.safetensors" "12345678")
run_checked(COMMAND "${CALIBRATE}" --projection "${WORK_DIR}/broken.safetensors" --eval "${held}" EXPECT_FAIL EXIT 1
            EXPECT "broken.safetensors: the header length")
run_checked(COMMAND "${CALIBRATE}" --dumps "${train}" EXPECT_FAIL EXIT 2 EXPECT "--out FILE.safetensors is required")
run_checked(COMMAND "${CALIBRATE}" --dumps "${train}" --out "${proj}" --source values EXPECT_FAIL EXIT 2
            EXPECT "--source: values not in")
run_checked(COMMAND "${CALIBRATE}" --bogus EXPECT_FAIL EXIT 2 EXPECT "not expected: --bogus")
message(STATUS "aqua_calibrate end-to-end: all checks passed")

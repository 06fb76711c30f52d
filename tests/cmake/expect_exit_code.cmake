# Runs PROGRAM ARGUMENT and passes only if it exits with EXPECT (the loud-skip machinery: a run
# whose every case skipped exits 77, a case that failed before skipping still fails).
execute_process(COMMAND "${PROGRAM}" "${ARGUMENT}" RESULT_VARIABLE result ERROR_VARIABLE err OUTPUT_VARIABLE out)
if(NOT result EQUAL "${EXPECT}")
  message(FATAL_ERROR "expected ${PROGRAM} ${ARGUMENT} to exit ${EXPECT}, got ${result}\nstdout: ${out}\nstderr: ${err}")
endif()
message(STATUS "exited ${result} as expected")

# Runs PROGRAM ARGUMENT and passes only if it fails and its stderr matches EXPECT.
execute_process(COMMAND "${PROGRAM}" "${ARGUMENT}" RESULT_VARIABLE result ERROR_VARIABLE err OUTPUT_VARIABLE out)
if(result EQUAL 0)
  message(FATAL_ERROR "expected ${PROGRAM} ${ARGUMENT} to abort, but it exited 0\nstdout: ${out}\nstderr: ${err}")
endif()
if(NOT err MATCHES "${EXPECT}")
  message(FATAL_ERROR "stderr does not match '${EXPECT}':\n${err}")
endif()
message(STATUS "aborted as expected (${result}): ${err}")

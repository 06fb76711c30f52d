# docs/cli.md is what scripts/cli-doc writes from the built tools' --help (cmake -DSOURCE_DIR=<checkout>
# -DBUILD_DIR=<build> -P cli_doc_check.cmake): a flag added, removed or reworded without
# regenerating the page fails here.
execute_process(COMMAND bash "${SOURCE_DIR}/scripts/cli-doc" "${BUILD_DIR}" RESULT_VARIABLE result
                OUTPUT_VARIABLE generated ERROR_VARIABLE err)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "scripts/cli-doc ${BUILD_DIR} failed (${result}):\n${err}")
endif()
file(READ "${SOURCE_DIR}/docs/cli.md" committed)
if(NOT generated STREQUAL committed)
  set(fresh "${BUILD_DIR}/cli.md")
  file(WRITE "${fresh}" "${generated}")
  message(FATAL_ERROR "docs/cli.md is out of date with the tools' --help; see\n"
                      "  diff ${SOURCE_DIR}/docs/cli.md ${fresh}\n"
                      "and regenerate it: scripts/cli-doc ${BUILD_DIR} > docs/cli.md")
endif()
message(STATUS "docs/cli.md matches the --help of every tool")

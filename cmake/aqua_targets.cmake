# Settings for aqua's own binaries (tests, benchmarks, examples). None of this reaches users of
# the aqua::aqua target: warnings, -march=native and sanitizers stay inside this project.
include_guard(GLOBAL)

function(aqua_configure_target target)
  target_link_libraries(${target} PRIVATE aqua::aqua)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow)
    if(AQUA_WERROR)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
    if(AQUA_NATIVE)
      target_compile_options(${target} PRIVATE -march=native)
    endif()
    if(AQUA_SANITIZE)
      target_compile_options(${target} PRIVATE -fsanitize=${AQUA_SANITIZE} -fno-omit-frame-pointer
                                               -fno-sanitize-recover=all)
      target_link_options(${target} PRIVATE -fsanitize=${AQUA_SANITIZE})
    endif()
  endif()
  # Internal invariants stay checked in our optimised builds.
  target_compile_definitions(${target} PRIVATE AQUA_ENABLE_ASSERTS)
endfunction()

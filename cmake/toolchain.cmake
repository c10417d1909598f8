# Compiler launcher, linker and warning/sanitizer flags shared by every target.

find_program(CCACHE_PROGRAM ccache)
if(CCACHE_PROGRAM)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
  set(CMAKE_C_COMPILER_LAUNCHER ${CCACHE_PROGRAM})
endif()

find_program(MOLD_PROGRAM mold)
if(MOLD_PROGRAM)
  add_link_options(-fuse-ld=mold)
endif()

add_compile_options(-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
                    # GCC 12 reports std::variant/optional false positives at -O2.
                    -Wno-maybe-uninitialized)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  # GCC 12 at -O3 (the release preset) reports std::string copies as overlapping memcpy (GCC
  # bug 105651).
  add_compile_options($<$<CONFIG:Release>:-Wno-restrict>)
endif()
if(CHORUS_WERROR)
  add_compile_options(-Werror)
endif()

if(CHORUS_SANITIZE)
  # -O0 keeps Beast/Asio translation units affordable under ASan (see BUILD-NOTES).
  add_compile_options(-O0 -g -fsanitize=address,undefined -fno-omit-frame-pointer
                      -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=address,undefined)
endif()

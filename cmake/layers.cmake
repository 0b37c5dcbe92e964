# One static library per layer (qlora_<name> from trainer/<name>/*.cpp), linked only to the layers
# named as its DEPS, and a build-time check that no file of a layer includes a header of a layer
# it does not depend on (directly or through its DEPS). The README's architecture picture draws
# the same graph.
#
#   qlora_layer(NAME [DIR dir] [DEPS layer...] [LIBS target...] [TORCH])
#     DIR    source folder relative to the top (default trainer/NAME)
#     DEPS   lower layers (their include permissions are inherited)
#     LIBS   third-party targets this layer uses itself
#     TORCH  the layer uses LibTorch: link it and reuse the shared precompiled header
#
# The check (cmake/check_layer.cmake) runs before the layer compiles, whenever one of its files
# changes: an include of "trainer/X/..." or "kernels/..." that the layer may not see stops the
# build with the file, the line and what the layer may include.

set(QLORA_LAYER_CHECK ${CMAKE_CURRENT_LIST_DIR}/check_layer.cmake)

# Registers the include check of layer `name` (folder `dir`, may include ALLOWED folders) on
# TARGET (default qlora_<name>): for layers whose target is made elsewhere (kernels/, the cli).
function(qlora_layer_check name dir)
  cmake_parse_arguments(C "" "TARGET" "ALLOWED" ${ARGN})
  if(NOT C_TARGET)
    set(C_TARGET qlora_${name})
  endif()
  file(GLOB_RECURSE _files CONFIGURE_DEPENDS
       ${CMAKE_SOURCE_DIR}/${dir}/*.h ${CMAKE_SOURCE_DIR}/${dir}/*.cpp
       ${CMAKE_SOURCE_DIR}/${dir}/*.cu ${CMAKE_SOURCE_DIR}/${dir}/*.cuh)
  set(_stamp ${CMAKE_BINARY_DIR}/layers/${name}.ok)
  string(REPLACE ";" "," _allowed "${C_ALLOWED}")
  add_custom_command(OUTPUT ${_stamp}
    COMMAND ${CMAKE_COMMAND} -DLAYER=${name} -DLAYER_DIR=${dir} "-DALLOWED=${_allowed}"
            -DSOURCE_DIR=${CMAKE_SOURCE_DIR} -DSTAMP=${_stamp} -P ${QLORA_LAYER_CHECK}
    DEPENDS ${_files} ${QLORA_LAYER_CHECK}
    COMMENT "Checking the includes of layer ${name}" VERBATIM)
  add_custom_target(qlora_${name}_layering DEPENDS ${_stamp})
  add_dependencies(${C_TARGET} qlora_${name}_layering)
  set_property(GLOBAL PROPERTY QLORA_LAYER_DIRS_${name} "${C_ALLOWED}")
endfunction()

# The folders a layer in `dir` on top of `deps` may include: its own and, transitively, theirs.
function(qlora_layer_allowed out name dir)
  set(_allowed ${dir})
  foreach(dep ${ARGN})
    get_property(_known GLOBAL PROPERTY QLORA_LAYER_DIRS_${dep} SET)
    if(NOT _known)
      message(FATAL_ERROR "layer ${name}: unknown or later layer '${dep}' (define layers bottom-up)")
    endif()
    get_property(_dep_dirs GLOBAL PROPERTY QLORA_LAYER_DIRS_${dep})
    list(APPEND _allowed ${_dep_dirs})
  endforeach()
  list(REMOVE_DUPLICATES _allowed)
  set(${out} ${_allowed} PARENT_SCOPE)
endfunction()

function(qlora_layer name)
  cmake_parse_arguments(L "TORCH" "DIR" "DEPS;LIBS" ${ARGN})
  if(NOT L_DIR)
    set(L_DIR trainer/${name})
  endif()
  file(GLOB _src CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/${L_DIR}/*.cpp)
  add_library(qlora_${name} STATIC ${_src})
  target_include_directories(qlora_${name} PUBLIC ${CMAKE_SOURCE_DIR})
  target_compile_options(qlora_${name} PRIVATE ${QLORA_WARNINGS})
  qlora_layer_allowed(_allowed ${name} ${L_DIR} ${L_DEPS})
  foreach(dep ${L_DEPS})
    target_link_libraries(qlora_${name} PUBLIC qlora_${dep})
  endforeach()
  if(L_LIBS)
    target_link_libraries(qlora_${name} PUBLIC ${L_LIBS})
  endif()
  if(L_TORCH)
    target_link_libraries(qlora_${name} PUBLIC qlora_torch)
    target_precompile_headers(qlora_${name} REUSE_FROM qlora_kernels)
  endif()
  qlora_layer_check(${name} ${L_DIR} ALLOWED ${_allowed})
endfunction()

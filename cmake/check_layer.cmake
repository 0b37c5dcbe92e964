# cmake -DLAYER=name -DLAYER_DIR=trainer/name -DALLOWED=dir1,dir2 -DSOURCE_DIR=... -DSTAMP=file
#       -P check_layer.cmake
# Fails (with one line per offending include) when a file under LAYER_DIR includes a project
# header ("trainer/<folder>/..." or "kernels/...") outside the ALLOWED folders; writes STAMP
# when every include is allowed. Used by cmake/layers.cmake at build time and by a test.
cmake_minimum_required(VERSION 3.25)
foreach(v LAYER LAYER_DIR ALLOWED SOURCE_DIR STAMP)
  if(NOT DEFINED ${v})
    message(FATAL_ERROR "check_layer.cmake: -D${v}=... is required")
  endif()
endforeach()
get_filename_component(SOURCE_DIR "${SOURCE_DIR}" ABSOLUTE)
string(REPLACE "," ";" _allowed "${ALLOWED}")
file(GLOB_RECURSE _files RELATIVE ${SOURCE_DIR}
     ${SOURCE_DIR}/${LAYER_DIR}/*.h ${SOURCE_DIR}/${LAYER_DIR}/*.cpp
     ${SOURCE_DIR}/${LAYER_DIR}/*.cu ${SOURCE_DIR}/${LAYER_DIR}/*.cuh)
set(_bad "")
foreach(f ${_files})
  # Only the include lines (they hold no ';', which would split a CMake list).
  file(STRINGS ${SOURCE_DIR}/${f} _lines REGEX "^[ \t]*#[ \t]*include[ \t]*\"")
  foreach(line IN LISTS _lines)
    if(line MATCHES "^[ \t]*#[ \t]*include[ \t]*\"[^\"]*\\.\\./")
      string(STRIP "${line}" _inc)
      string(APPEND _bad "  ${f}: ${_inc} (name project headers from the top: trainer/..., kernels/...)\n")
      continue()
    endif()
    if(NOT line MATCHES "^[ \t]*#[ \t]*include[ \t]*\"((trainer/[A-Za-z0-9_]+)|kernels)/[^\"]*\"")
      continue()
    endif()
    set(_dir ${CMAKE_MATCH_1})
    if(NOT _dir IN_LIST _allowed)
      string(STRIP "${line}" _inc)
      string(APPEND _bad "  ${f}: ${_inc}\n")
    endif()
  endforeach()
endforeach()
if(_bad)
  message(FATAL_ERROR "layer '${LAYER}' may include only ${ALLOWED}; these includes reach "
                      "outside it:\n${_bad}")
endif()
file(WRITE ${STAMP} "ok\n")

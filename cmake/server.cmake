# server.cmake - `qvl serve`, the OpenAI-compatible HTTP server (server/), and its tests.
# Include from the top-level CMakeLists.txt after the qvl_cli target and enable_testing():
#     include(cmake/server.cmake)
pkg_check_modules(MHD REQUIRED IMPORTED_TARGET libmicrohttpd)

add_library(qvl_server STATIC
    ${CMAKE_SOURCE_DIR}/server/serve.c
    ${CMAKE_SOURCE_DIR}/server/routes.c
    ${CMAKE_SOURCE_DIR}/server/slots.c
    ${CMAKE_SOURCE_DIR}/server/util.c
    ${CMAKE_SOURCE_DIR}/server/fetch.c)
target_include_directories(qvl_server PUBLIC ${CMAKE_SOURCE_DIR}/server)
target_compile_options(qvl_server PRIVATE ${QVL_WARN})
target_link_libraries(qvl_server PUBLIC qvl PkgConfig::MHD PkgConfig::CJSON Threads::Threads)
# http(s) image and video URLs (`qvl run -i URL`, `qvl serve --allow-remote-media`)
pkg_check_modules(CURL IMPORTED_TARGET libcurl)
if(CURL_FOUND)
    target_compile_definitions(qvl_server PRIVATE QVL_HAVE_CURL)
    target_link_libraries(qvl_server PUBLIC PkgConfig::CURL)
else()
    message(WARNING "libcurl development files not found: image and video URLs will be refused")
endif()

# `qvl serve`: cli/qvl.c calls qvl_cli_serve(argc - 2, argv + 2)
if(TARGET qvl_cli)
    target_link_libraries(qvl_cli PRIVATE qvl_server)
endif()

add_executable(qvl_server_bin ${CMAKE_SOURCE_DIR}/server/standalone.c)
set_target_properties(qvl_server_bin PROPERTIES OUTPUT_NAME qvl-server)
target_compile_options(qvl_server_bin PRIVATE ${QVL_WARN})
target_link_libraries(qvl_server_bin PRIVATE qvl_server)

# tests: curl (raw HTTP, SSE framing, errors, hostile input, concurrency) and the official
# openai npm client (skipped with a message when npm cannot install it)
add_test(NAME server_http COMMAND bash ${CMAKE_SOURCE_DIR}/tests/server/test_server.sh)
set_tests_properties(server_http PROPERTIES TIMEOUT 300 RUN_SERIAL TRUE
    ENVIRONMENT "QVL_SHARED=${QVL_SHARED_DIR};QVL_BIN=$<TARGET_FILE:qvl_cli>;QVL_SERVER_BIN=$<TARGET_FILE:qvl_server_bin>;QVL_BUILD=${CMAKE_BINARY_DIR};QVL_SRC=${CMAKE_SOURCE_DIR}")

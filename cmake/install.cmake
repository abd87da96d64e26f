# What `cmake --install` puts under the prefix, the package config that
# find_package(rag CONFIG) reads, and the Debian package CPack makes:
#   bin/rag                                  the command line
#   lib/librag_*.a                           the libraries (static, PIC)
#   include/rag/{common,lm,retriever,...}/   their headers; proto/rag.pb.h too
#   lib/cmake/rag/                           rag-config.cmake, rag::* targets
#   lib/python3/dist-packages/rag*.so        the Python module (Debian's path)
# A consumer includes "retriever/retriever.h", "services/engine.h", ... as
# the project's own code does.
include(CMakePackageConfigHelpers)

# rag_retriever is exported as rag::retriever, and so on.
set(RAG_EXPORTED_LIBRARIES rag_proto rag_common rag_tokenizer rag_lm rag_retriever rag_index_builder rag_eval
  rag_services)
foreach(lib IN LISTS RAG_EXPORTED_LIBRARIES)
  string(REGEX REPLACE "^rag_" "" export_name "${lib}")
  set_target_properties(${lib} PROPERTIES EXPORT_NAME ${export_name})
endforeach()

install(TARGETS ${RAG_EXPORTED_LIBRARIES} EXPORT rag-targets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT dev)
install(TARGETS rag RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT bin)

# Every header of the libraries, internal/ ones included: public headers
# include some of them.
foreach(dir common lm retriever index_builder eval services)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/${dir}/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/rag/${dir}
    COMPONENT dev FILES_MATCHING PATTERN "*.h" PATTERN "cli" EXCLUDE)
endforeach()
install(FILES ${RAG_PROTO_HDRS} ${PROJECT_SOURCE_DIR}/proto/rag.proto
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/rag/proto COMPONENT dev)

set(RAG_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/rag)
install(EXPORT rag-targets NAMESPACE rag:: DESTINATION ${RAG_CMAKE_DIR} COMPONENT dev)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/rag-config.cmake.in
  ${PROJECT_BINARY_DIR}/rag-config.cmake INSTALL_DESTINATION ${RAG_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/rag-config-version.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/rag-config.cmake ${PROJECT_BINARY_DIR}/rag-config-version.cmake
  DESTINATION ${RAG_CMAKE_DIR} COMPONENT dev)

# One Debian package with all of it. dpkg-shlibdeps derives the run-time
# Depends from the binary and the module; the -dev packages a consumer
# compiles against are listed by hand (they are what rag-config.cmake finds).
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME rag)
set(CPACK_PACKAGE_VENDOR "rag")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "Retrieval-augmented language models: FAISS index, LibTorch models, gRPC service")
set(CPACK_PACKAGE_CONTACT "rag maintainers <rag@localhost>")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_DEPENDS "libtorch-dev, libfaiss-dev, librocksdb-dev, libgrpc++-dev, libprotobuf-dev, \
libabsl-dev, nlohmann-json3-dev, prometheus-cpp-dev, libcpp-httplib-dev, libpcre2-dev, libxxhash-dev, libicu-dev, \
libgloo-dev, python3-numpy")
set(CPACK_DEB_COMPONENT_INSTALL OFF)
include(CPack)

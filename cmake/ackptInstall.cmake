include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(ACKPT_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/ackpt)

install(TARGETS ackpt EXPORT ackptTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/ackpt DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT ackptTargets NAMESPACE ackpt:: DESTINATION ${ACKPT_CMAKE_DIR})

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/ackptConfig.cmake.in
  ${PROJECT_BINARY_DIR}/ackptConfig.cmake INSTALL_DESTINATION ${ACKPT_CMAKE_DIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/ackptConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/ackptConfig.cmake
  ${PROJECT_BINARY_DIR}/ackptConfigVersion.cmake
  ${PROJECT_SOURCE_DIR}/cmake/ackptDependencies.cmake
  DESTINATION ${ACKPT_CMAKE_DIR})

// aqua: attention via query magnitudes. Version numbers (CMake reads them from this file).
#pragma once

#define AQUA_VERSION_MAJOR 0
#define AQUA_VERSION_MINOR 1
#define AQUA_VERSION_PATCH 0

#define AQUA_VERSION_STRING "0.1.0"

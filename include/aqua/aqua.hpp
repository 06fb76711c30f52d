// Umbrella header: every public aqua header, nothing else.
#pragma once

#include "aqua/attention.hpp"
#include "aqua/calibrate.hpp"
#include "aqua/config.hpp"
#include "aqua/cost_model.hpp"
#include "aqua/eigen.hpp"
#include "aqua/executor.hpp"
#include "aqua/h2o.hpp"
#include "aqua/io.hpp"
#include "aqua/isa.hpp"
#include "aqua/kv_cache.hpp"
#include "aqua/merge.hpp"
#include "aqua/projection.hpp"
#include "aqua/quality.hpp"
#include "aqua/select.hpp"
#include "aqua/tensor_view.hpp"
#include "aqua/version.hpp"

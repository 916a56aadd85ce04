// The pointwise backends that ops.cpp binds to each dispatch key.
#pragma once

#include "lstm_driver.h"

namespace tbptt {
namespace cpu {
const PointwiseBackend& backend();
}
#ifdef TBPTT_WITH_CUDA
namespace cuda {
const PointwiseBackend& backend();
}
#endif
}  // namespace tbptt

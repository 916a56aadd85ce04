// The one switch from a runtime StorageType to a kernel instantiation, shared by every launch
// glue header (lstm_launch.h, persistent_launch.h) of both builds. No ATen.
#pragma once

#include "tbptt/simt.h"
#include "tbptt/window.h"

namespace tbptt {
namespace SIMT_NS {

// Calls launch(storage, accumulation) with value-initialised tags of the storage type and of
// the accumulation type (float, or double for float64): the one switch from the runtime
// StorageType to a kernel instantiation.
template <typename Launch>
simt::Status with_storage_type(StorageType storage, Launch&& launch) {
  switch (storage) {
    case StorageType::kFloat32: return launch(float{}, float{});
    case StorageType::kFloat64: return launch(double{}, double{});
    case StorageType::kFloat16: return launch(simt::float16{}, float{});
    case StorageType::kBFloat16: return launch(simt::bfloat16{}, float{});
  }
  return simt::Status(1);  // cudaErrorInvalidValue
}

}  // namespace SIMT_NS
}  // namespace tbptt

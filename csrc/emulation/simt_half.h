// 16-bit floating-point storage types of the SIMT emulator: what __half and __nv_bfloat16 are
// to device code under nvcc. Framework-free; no CUDA toolkit needed.
//
// Conversions round to nearest even, as __float2half / __float2bfloat16 do, and are
// bit-identical to them for every non-NaN float (NaN becomes the canonical 0x7fff, as there).
// As with PyTorch's nvcc flags (__CUDA_NO_HALF_CONVERSIONS__ ...), nothing converts
// implicitly: device code converts explicitly, with static_cast (tbptt::convert does).
#pragma once

#include <cstdint>
#include <cstring>

namespace simt {
namespace emu {

inline uint32_t float_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline float bits_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// float -> IEEE binary16, round to nearest even (subnormals and overflow to inf included).
inline uint16_t float_to_half_bits(float value) {
  const uint32_t x = float_bits(value);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t magnitude = x & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {  // inf, NaN
    return magnitude > 0x7f800000u ? 0x7fffu : static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (magnitude < 0x38800000u) {  // below 2^-14: a half subnormal or zero
    if (magnitude < 0x33000000u) return sign;  // below 2^-25 (2^-25 itself ties to even 0)
    const uint32_t exponent = magnitude >> 23;
    const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exponent;  // value / 2^-24 = mantissa >> shift
    uint32_t quotient = mantissa >> shift;
    const uint32_t remainder = mantissa & ((1u << shift) - 1u);
    const uint32_t half_unit = 1u << (shift - 1u);
    if (remainder > half_unit || (remainder == half_unit && (quotient & 1u))) ++quotient;
    return static_cast<uint16_t>(sign | quotient);
  }
  // Normal: rebias the exponent (127 -> 15) and round the mantissa's low 13 bits away; a
  // carry out of the mantissa correctly bumps the exponent.
  uint32_t quotient = (magnitude - 0x38000000u) >> 13;
  const uint32_t remainder = magnitude & 0x1fffu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (quotient & 1u))) ++quotient;
  return static_cast<uint16_t>(sign | quotient);
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  if (exponent == 0) {
    if (mantissa == 0) return bits_float(sign);
    // subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * (1.0f / 16777216.0f);
    return sign ? -magnitude : magnitude;
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// float -> bfloat16, round to nearest even.
inline uint16_t float_to_bfloat16_bits(float value) {
  const uint32_t x = float_bits(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;  // NaN
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float bfloat16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

}  // namespace emu

// binary16 storage (layout of __half and of at::Half).
struct float16 {
  uint16_t bits;
  float16() = default;
  explicit float16(float value) : bits(emu::float_to_half_bits(value)) {}
  explicit operator float() const { return emu::half_bits_to_float(bits); }
};

// bfloat16 storage (layout of __nv_bfloat16 and of at::BFloat16).
struct bfloat16 {
  uint16_t bits;
  bfloat16() = default;
  explicit bfloat16(float value) : bits(emu::float_to_bfloat16_bits(value)) {}
  explicit operator float() const { return emu::bfloat16_bits_to_float(bits); }
};

static_assert(sizeof(float16) == 2 && sizeof(bfloat16) == 2, "16-bit storage types");

}  // namespace simt

// Base64 decoding (fast table path + CPython's exact strict-mode rules on the tail or on error),
// float32 -> float16 conversion as numpy does it, and Python's int() for ASCII.
#include "codec.h"

#include <immintrin.h>

#include <cstring>

namespace featstore {
namespace {

constexpr uint32_t kBad = 0x01000000u;

struct Tables {
    uint8_t value[256];     // 0..63, or 0xFF for a non-alphabet byte
    uint32_t d[4][256];     // value shifted into its position in the 24-bit group, or kBad
    Tables() {
        const char* alphabet =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        std::memset(value, 0xFF, sizeof(value));
        for (int i = 0; i < 64; ++i) value[static_cast<uint8_t>(alphabet[i])] = uint8_t(i);
        for (int c = 0; c < 256; ++c) {
            uint32_t v = value[c];
            bool bad = v == 0xFF;
            // Output bytes are stored little-endian: group bits b0 b1 b2 -> bytes 0, 1, 2.
            d[0][c] = bad ? kBad : (v << 2);
            d[1][c] = bad ? kBad : ((v >> 4) | ((v & 0x0F) << 12));
            d[2][c] = bad ? kBad : (((v >> 2) << 8) | ((v & 0x03) << 22));
            d[3][c] = bad ? kBad : (v << 16);
        }
    }
};
const Tables kTables;

// CPython's binascii.a2b_base64 in strict mode (what base64.b64decode(validate=True) runs),
// including its quirks: '=' after a complete group is ignored, data after "xx==" is an error.
bool b64_decode_exact(const char* s, size_t len, uint8_t* out, size_t cap, size_t* out_len,
                      std::string* error) {
    int quad = 0, pads = 0;
    bool padding_started = false;
    uint32_t leftchar = 0;
    size_t n = 0;
    if (len > 0 && s[0] == '=') {
        *error = "Leading padding not allowed (position 0)";
        return false;
    }
    for (size_t i = 0; i < len; ++i) {
        uint8_t c = static_cast<uint8_t>(s[i]);
        if (c == '=') {
            padding_started = true;
            if (quad >= 2 && quad + ++pads >= 4) {
                if (i + 1 < len) {
                    *error = "Excess data after padding (position " + std::to_string(i + 1) + ")";
                    return false;
                }
                quad = 0;
                break;
            }
            continue;
        }
        uint8_t v = kTables.value[c];
        if (v == 0xFF) {
            *error = "Only base64 data is allowed (byte " + std::to_string(int(c)) +
                     " at position " + std::to_string(i) + ")";
            return false;
        }
        if (padding_started) {
            *error = "Discontinuous padding not allowed (position " + std::to_string(i) + ")";
            return false;
        }
        pads = 0;
        if (quad != 0 && n >= cap) {
            *error = "decoded data longer than the " + std::to_string(cap) + " bytes expected";
            return false;
        }
        switch (quad) {
            case 0: quad = 1; leftchar = v; break;
            case 1: quad = 2; out[n++] = uint8_t((leftchar << 2) | (v >> 4)); leftchar = v & 0x0F; break;
            case 2: quad = 3; out[n++] = uint8_t((leftchar << 4) | (v >> 2)); leftchar = v & 0x03; break;
            default: quad = 0; out[n++] = uint8_t((leftchar << 6) | v); leftchar = 0; break;
        }
    }
    if (quad != 0) {
        *error = quad == 1 ? "number of data characters cannot be 1 more than a multiple of 4"
                           : "Incorrect padding";
        return false;
    }
    *out_len = n;
    return true;
}


// AVX2 decoding of 32 characters -> 24 bytes per step (Muła & Lemire, "Faster Base64 Encoding
// and Decoding Using AVX2 Instructions", 2018): classify each byte by its high nibble (a bit
// per class) and its low nibble (the classes in which it is invalid), translate by a per-class
// offset, then pack 4 x 6 bits into 3 bytes with two multiply-adds and a shuffle.
// Returns the characters consumed (a multiple of 32); stops before any invalid group.
__attribute__((target("avx2"))) size_t b64_decode_avx2(const uint8_t* in, size_t len,
                                                         uint8_t* out, size_t cap) {
    const __m256i lut_lo = _mm256_setr_epi8(
        0x15, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x13, 0x1A, 0x1B, 0x1B, 0x1B,
        0x1A, 0x15, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x13, 0x1A, 0x1B, 0x1B,
        0x1B, 0x1A);
    const __m256i lut_hi = _mm256_setr_epi8(
        0x10, 0x10, 0x01, 0x02, 0x04, 0x08, 0x04, 0x08, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,
        0x10, 0x10, 0x10, 0x01, 0x02, 0x04, 0x08, 0x04, 0x08, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10,
        0x10, 0x10);
    const __m256i lut_roll = _mm256_setr_epi8(
        0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 16, 19, 4, -65, -65, -71, -71, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i slash = _mm256_set1_epi8(0x2F);
    const __m256i pack_shuffle = _mm256_setr_epi8(
        2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1,
        2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1);
    const __m256i pack_lanes = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 7, 7);
    size_t i = 0, o = 0;
    while (i + 32 <= len && o + 32 <= cap) {
        __m256i str = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i));
        __m256i hi_n = _mm256_and_si256(_mm256_srli_epi32(str, 4), nibble);
        __m256i lo_n = _mm256_and_si256(str, nibble);
        __m256i lo = _mm256_shuffle_epi8(lut_lo, lo_n);
        __m256i hi = _mm256_shuffle_epi8(lut_hi, hi_n);
        if (!_mm256_testz_si256(lo, hi)) break;
        __m256i eq_slash = _mm256_cmpeq_epi8(str, slash);
        __m256i roll = _mm256_shuffle_epi8(lut_roll, _mm256_add_epi8(eq_slash, hi_n));
        __m256i v = _mm256_add_epi8(str, roll);
        __m256i ab = _mm256_maddubs_epi16(v, _mm256_set1_epi32(0x01400140));
        __m256i abcd = _mm256_madd_epi16(ab, _mm256_set1_epi32(0x00011000));
        __m256i packed = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(abcd, pack_shuffle),
                                                     pack_lanes);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + o), packed);
        i += 32;
        o += 24;
    }
    return i;
}

// Hardware float32 -> float16 (F16C, round to nearest even) for 8 values at a time; blocks
// holding a NaN are left to the scalar path (numpy keeps NaN payload bits its own way).
__attribute__((target("avx2,f16c"))) size_t floats_to_halves_f16c(const float* src,
                                                                   uint16_t* dst, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_loadu_ps(src + i);
        if (_mm256_movemask_ps(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)) != 0) {
            for (size_t k = 0; k < 8; ++k) {
                uint32_t bits;
                std::memcpy(&bits, src + i + k, 4);
                dst[i + k] = float_to_half_bits(bits);
            }
            continue;
        }
        __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
    }
    return i;
}

const bool kHasAvx2 = __builtin_cpu_supports("avx2");
const bool kHasF16c = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
}  // namespace

int64_t b64_decoded_size(const char* s, size_t len) {
    size_t data = len;
    while (data > 0 && s[data - 1] == '=') --data;
    if (data % 4 == 1) return -1;
    return int64_t(data / 4 * 3 + (data % 4 == 0 ? 0 : data % 4 - 1));
}

bool b64_decode(const char* s, size_t len, uint8_t* out, size_t cap, size_t* out_len,
                std::string* error) {
    // Fast path: whole groups of 4 valid characters; the last group (possibly padded) and any
    // input the fast path does not accept go through the exact decoder.
    size_t data = len;
    while (data > 0 && s[data - 1] == '=') --data;
    size_t body = len >= 4 ? (len - 1) / 4 * 4 : 0;
    if (body > data / 4 * 4) body = data / 4 * 4;
    if (body / 4 * 3 > cap) body = cap / 3 * 4;
    const uint8_t* p = reinterpret_cast<const uint8_t*>(s);
    uint32_t acc = 0;
    uint8_t* o = out;
    size_t start = 0;
    if (kHasAvx2) {
        start = b64_decode_avx2(p, body, out, cap);
        o += start / 4 * 3;
    }
    for (size_t i = start; i < body; i += 4, o += 3) {
        uint32_t x = kTables.d[0][p[i]] | kTables.d[1][p[i + 1]] | kTables.d[2][p[i + 2]] |
                     kTables.d[3][p[i + 3]];
        acc |= x;
        o[0] = uint8_t(x);
        o[1] = uint8_t(x >> 8);
        o[2] = uint8_t(x >> 16);
    }
    if (acc & kBad) return b64_decode_exact(s, len, out, cap, out_len, error);
    size_t tail_len = 0;
    size_t done = size_t(o - out);
    if (!b64_decode_exact(s + body, len - body, o, cap - done, &tail_len, error)) {
        // Re-run on the whole text so that positions in the message are absolute.
        return b64_decode_exact(s, len, out, cap, out_len, error);
    }
    *out_len = size_t(o - out) + tail_len;
    return true;
}

uint16_t float_to_half_bits(uint32_t f) {
    uint16_t h_sgn = uint16_t((f & 0x80000000u) >> 16);
    uint32_t f_exp = f & 0x7f800000u;
    uint32_t f_sig;
    if (f_exp >= 0x47800000u) {
        if (f_exp == 0x7f800000u) {
            f_sig = f & 0x007fffffu;
            if (f_sig != 0) {
                uint16_t ret = uint16_t(0x7c00u + (f_sig >> 13));
                if (ret == 0x7c00u) ret++;
                return uint16_t(h_sgn + ret);
            }
            return uint16_t(h_sgn + 0x7c00u);
        }
        return uint16_t(h_sgn + 0x7c00u);
    }
    if (f_exp <= 0x38000000u) {
        if (f_exp < 0x33000000u) return h_sgn;
        f_exp >>= 23;
        f_sig = 0x00800000u + (f & 0x007fffffu);
        f_sig >>= (113 - f_exp);
        if (((f_sig & 0x00003fffu) != 0x00001000u) || (f & 0x000007ffu)) f_sig += 0x00001000u;
        return uint16_t(h_sgn + uint16_t(f_sig >> 13));
    }
    uint16_t h_exp = uint16_t((f_exp - 0x38000000u) >> 13);
    f_sig = f & 0x007fffffu;
    if ((f_sig & 0x00003fffu) != 0x00001000u) f_sig += 0x00001000u;
    uint16_t h_sig = uint16_t(f_sig >> 13);
    return uint16_t(h_sgn + h_exp + h_sig);
}

void floats_to_halves(const float* src, uint16_t* dst, size_t n) {
    size_t start = kHasF16c ? floats_to_halves_f16c(src, dst, n) : 0;
    for (size_t i = start; i < n; ++i) {
        uint32_t bits;
        std::memcpy(&bits, src + i, 4);
        dst[i] = float_to_half_bits(bits);
    }
}

bool parse_py_int(const char* s, size_t len, int64_t* value, bool* overflow) {
    auto is_space = [](char c) {
        return c == ' ' || (c >= '\t' && c <= '\r');
    };
    *overflow = false;
    size_t b = 0, e = len;
    while (b < e && is_space(s[b])) ++b;
    while (e > b && is_space(s[e - 1])) --e;
    bool neg = false;
    if (b < e && (s[b] == '+' || s[b] == '-')) neg = s[b++] == '-';
    if (b == e) return false;
    uint64_t v = 0;
    bool prev_digit = false;
    for (size_t i = b; i < e; ++i) {
        char c = s[i];
        if (c == '_') {
            if (!prev_digit || i + 1 == e) return false;
            prev_digit = false;
            continue;
        }
        if (c < '0' || c > '9') return false;
        prev_digit = true;
        if (v > (uint64_t(INT64_MAX) - uint64_t(c - '0')) / 10) *overflow = true;
        else v = v * 10 + uint64_t(c - '0');
    }
    if (*overflow) return false;
    *value = neg ? -int64_t(v) : int64_t(v);
    return true;
}

}  // namespace featstore

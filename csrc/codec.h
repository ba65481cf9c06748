// Field codecs of the LXMERT TSV format with Python's exact semantics, so that the C++ reader
// accepts and rejects what lxmert_fast/features/tsv.py (base64.b64decode(validate=True), int())
// accepts and rejects; and numpy's float32 -> float16 cast (round to nearest even).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace featstore {

// Number of bytes that base64 text `s` decodes to if it is valid; -1 when its length alone
// proves it invalid. Cheap: looks at the trailing '=' only.
int64_t b64_decoded_size(const char* s, size_t len);

// Decode base64 text into `out` (room for `cap` bytes; b64_decoded_size bytes suffice for text
// that can be valid). Returns true on success; on failure `error` holds CPython's reason
// (e.g. "Incorrect padding") and its position.
bool b64_decode(const char* s, size_t len, uint8_t* out, size_t cap, size_t* out_len,
                std::string* error);

// numpy's npy_floatbits_to_halfbits: float32 bits -> float16 bits, round to nearest even,
// overflow to inf, NaN kept NaN.
uint16_t float_to_half_bits(uint32_t f);
void floats_to_halves(const float* src, uint16_t* dst, size_t n);

// Python int(text) for ASCII text: surrounding whitespace (" \t\n\v\f\r"), a sign, digits with single '_'
// between them. Returns false when Python would raise, or when the value needs more than
// 63 bits (`*overflow` set).
bool parse_py_int(const char* s, size_t len, int64_t* value, bool* overflow);

}  // namespace featstore

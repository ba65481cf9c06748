// One line of an LXMERT feature TSV: splitting into the ten fields, the cheap checks the reading
// thread does (field count, integers, img_id, feature dimension), and the full decode of the six
// base64 array fields that worker threads do. Checks and messages follow
// lxmert_fast/features/tsv.py (parse_line) and reference.py (TsvFeatures), in the same order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace featstore {

constexpr int kNumFields = 10;  // img_id img_h img_w objects_id objects_conf attrs_id
                                // attrs_conf num_boxes boxes features
enum Field : int {
    fImgId, fImgH, fImgW, fObjectsId, fObjectsConf, fAttrsId, fAttrsConf, fNumBoxes, fBoxes,
    fFeatures
};

struct LineJob {
    const char* text = nullptr;  // the line without '\n' and trailing '\r'
    size_t len = 0;
    uint32_t file = 0;           // index into the converter's path list
    uint64_t line_no = 0;        // 1-based, counting blank lines
    uint64_t offset = 0;         // byte offset of the line in its file
    uint32_t start[kNumFields] = {};
    uint32_t size[kNumFields] = {};
    int64_t img_h = 0, img_w = 0, num_boxes = 0;
    int64_t feature_dim = -1;    // from the features field's length; -1 when num_boxes == 0
    int oversized = -1;          // img_h or img_w when it needs more than 63 bits (reported
                                 // after the arrays, as reference.py does)
};

// Where a line is, as tsv.py words it: "<path>: line N (byte offset O), img_id 'x'".
std::string line_location(const std::string& path, const LineJob& job);
// Python's repr() of an ASCII string.
std::string py_repr(const char* s, size_t len);
// Throw FormatError "<location>: <what>", or the extra-fields error when the features field
// holds a tab (that error comes first in tsv.py's order).
[[noreturn]] void fail_line(const std::string& path, const LineJob& job, const std::string& what);

// Split into fields and run the reading thread's checks (throws FormatError); sets the
// integer fields and feature_dim. Array fields are only sized, not decoded. The features field
// (the rest of the line after the ninth tab) is not scanned: fail_line reports extra fields.
void parse_prefix(const std::string& path, LineJob* job);

// Destinations of one line's arrays (num_boxes entries each; features num_boxes x dim).
struct LineOut {
    int64_t* objects_id;
    float* objects_conf;
    int64_t* attrs_id;
    float* attrs_conf;
    float* boxes;
    void* features;        // float32, or float16 bits when half is set
    bool half;
};

// Decode and validate the six array fields in tsv.py's order (throws FormatError naming the
// field). `scratch` is reused between calls.
void decode_line(const std::string& path, const LineJob& job, int64_t dim, const LineOut& out,
                 std::vector<uint8_t>* scratch);

}  // namespace featstore

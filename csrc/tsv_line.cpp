// Splitting, checking and decoding one LXMERT TSV line (see tsv_line.h).
#include "tsv_line.h"

#include <cstring>

#include "codec.h"
#include "common.h"

namespace featstore {
namespace {

const char* const kFieldNames[kNumFields] = {
    "img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
    "num_boxes", "boxes", "features"};

std::string u128_str(unsigned __int128 v) {
    if (v == 0) return "0";
    std::string s;
    while (v) { s.insert(s.begin(), char('0' + int(v % 10))); v /= 10; }
    return s;
}

void parse_int_field(const std::string& path, LineJob* job, int field, int64_t* value) {
    const char* s = job->text + job->start[field];
    size_t len = job->size[field];
    bool overflow = false;
    if (!parse_py_int(s, len, value, &overflow)) {
        std::string shown = py_repr(s, len < 40 ? len : 40);
        if (overflow && field != fNumBoxes) {
            job->oversized = field;
            *value = INT64_MAX;
            return;
        }
        if (overflow)
            fail_line(path, *job, std::string("field ") + kFieldNames[field] + "=" + shown +
                                      " is too large (more than 63 bits)");
        fail_line(path, *job, std::string("field ") + kFieldNames[field] + "=" + shown +
                                  " is not an integer");
    }
    if (*value < 0)
        fail_line(path, *job, std::string("field ") + kFieldNames[field] + "=" +
                                  std::to_string(*value) + " is negative");
}

}  // namespace

std::string py_repr(const char* s, size_t len) {
    bool has_single = std::memchr(s, '\'', len) != nullptr;
    bool has_double = std::memchr(s, '"', len) != nullptr;
    char quote = (has_single && !has_double) ? '"' : '\'';
    std::string r(1, quote);
    static const char* hex = "0123456789abcdef";
    for (size_t i = 0; i < len; ++i) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '\\' || c == static_cast<unsigned char>(quote)) { r += '\\'; r += char(c); }
        else if (c == '\t') r += "\\t";
        else if (c == '\n') r += "\\n";
        else if (c == '\r') r += "\\r";
        else if (c < 0x20 || c >= 0x7f) { r += "\\x"; r += hex[c >> 4]; r += hex[c & 15]; }
        else r += char(c);
    }
    r += quote;
    return r;
}

std::string line_location(const std::string& path, const LineJob& job) {
    std::string where = path + ": line " + std::to_string(job.line_no) + " (byte offset " +
                        std::to_string(job.offset) + ")";
    if (job.size[fImgId] > 0)
        where += ", img_id " + py_repr(job.text + job.start[fImgId], job.size[fImgId]);
    return where;
}

void fail_line(const std::string& path, const LineJob& job, const std::string& what) {
    // parse_prefix does not scan the features field (most of the line) for tabs: extra fields
    // are found here, on the error path, and reported first as tsv.py does. A tab is not base64,
    // so a line with extra fields always ends up here (decoding its features fails at the latest).
    size_t extra = 0;
    const char* f = job.text + job.start[fFeatures];
    const char* end = f + job.size[fFeatures];
    while (f < end && (f = static_cast<const char*>(std::memchr(f, '\t', size_t(end - f))))) {
        ++extra;
        ++f;
    }
    if (extra > 0)
        throw FormatError(line_location(path, job) + ": " + std::to_string(kNumFields + extra) +
                          " fields, expected 10 (line truncated or malformed)");
    throw FormatError(line_location(path, job) + ": " + what);
}

void parse_prefix(const std::string& path, LineJob* job) {
    const char* p = job->text;
    size_t len = job->len;
    int nf = 0;
    size_t pos = 0;
    // The first nine fields end at a tab; features is the rest of the line (see fail_line).
    for (;;) {
        const void* tab = nf < kNumFields - 1 ? std::memchr(p + pos, '\t', len - pos) : nullptr;
        size_t end = tab ? size_t(static_cast<const char*>(tab) - p) : len;
        job->start[nf] = uint32_t(pos);
        job->size[nf] = uint32_t(end - pos);
        ++nf;
        if (!tab) break;
        pos = end + 1;
    }
    if (nf < kNumFields) {
        for (int f = nf; f < kNumFields; ++f) job->size[f] = 0;
        std::string missing = "[";
        for (int f = nf; f < kNumFields; ++f)
            missing += std::string(f > nf ? ", '" : "'") + kFieldNames[f] + "'";
        fail_line(path, *job, "missing field(s) " + missing + "] (line truncated or malformed)");
    }
    for (size_t i = 0; i < job->size[fImgId]; ++i)
        if (static_cast<unsigned char>(p[job->start[fImgId] + i]) >= 0x80)
            fail_line(path, *job, "non-ASCII byte in img_id at column " + std::to_string(i));
    parse_int_field(path, job, fImgH, &job->img_h);
    parse_int_field(path, job, fImgW, &job->img_w);
    parse_int_field(path, job, fNumBoxes, &job->num_boxes);
    job->feature_dim = -1;
    if (job->num_boxes > 0) {
        int64_t bytes = b64_decoded_size(p + job->start[fFeatures], job->size[fFeatures]);
        const unsigned __int128 per = static_cast<unsigned __int128>(job->num_boxes) * 4;
        if (bytes > 0 && static_cast<unsigned __int128>(bytes) % per == 0)
            job->feature_dim = int64_t(static_cast<unsigned __int128>(bytes) / per);
        else job->feature_dim = 0;  // invalid: decode_line reports it in tsv.py's order
    }
}

void decode_line(const std::string& path, const LineJob& job, int64_t dim, const LineOut& out,
                 std::vector<uint8_t>* scratch) {
    const unsigned __int128 n = static_cast<unsigned __int128>(job.num_boxes);
    struct Spec { int field; void* dst; unsigned per_box; };
    const Spec specs[6] = {
        {fObjectsId, out.objects_id, 8}, {fObjectsConf, out.objects_conf, 4},
        {fAttrsId, out.attrs_id, 8},     {fAttrsConf, out.attrs_conf, 4},
        {fBoxes, out.boxes, 16},         {fFeatures, out.features, 4}};
    for (const Spec& s : specs) {
        const char* text = job.text + job.start[s.field];
        size_t len = job.size[s.field];
        bool feats = s.field == fFeatures;
        unsigned __int128 want =
            feats ? n * static_cast<unsigned __int128>(dim > 0 ? dim : 0) * 4 : n * s.per_box;
        int64_t guess = b64_decoded_size(text, len);
        bool direct = s.dst != nullptr && want > 0 && guess >= 0 &&
                      static_cast<unsigned __int128>(guess) == want && !(feats && out.half);
        uint8_t* dst;
        size_t cap = (len / 4 + 1) * 3;
        if (direct) {
            dst = static_cast<uint8_t*>(s.dst);
            cap = size_t(want);
        } else {
            if (scratch->size() < cap) scratch->resize(cap);
            dst = scratch->data();
        }
        size_t got = 0;
        std::string err;
        if (!b64_decode(text, len, dst, cap, &got, &err))
            fail_line(path, job, std::string("field ") + kFieldNames[s.field] +
                                     ": invalid base64 (" + err + ")");
        if (feats) {
            const unsigned __int128 per = n * 4;
            bool ok = (n == 0 && got == 0) || (n > 0 && got > 0 && got % per == 0);
            if (!ok)
                fail_line(path, job, "field features: " + std::to_string(got) +
                                         " bytes is not num_boxes=" + std::to_string(job.num_boxes) +
                                         " x D x 4");
            if (n > 0 && dim >= 0 && got / per != static_cast<unsigned __int128>(dim))
                fail_line(path, job, "feature dimension " + u128_str(got / per) +
                                         " differs from the earlier images' " + std::to_string(dim));
        } else if (got != want) {
            fail_line(path, job, std::string("field ") + kFieldNames[s.field] + ": " +
                                     std::to_string(got) + " bytes, expected num_boxes=" +
                                     std::to_string(job.num_boxes) + " x " +
                                     std::to_string(s.per_box) + " = " + u128_str(want));
        }
        if (!direct && got > 0 && s.dst != nullptr) {
            if (feats && out.half)
                floats_to_halves(reinterpret_cast<const float*>(dst),
                                 static_cast<uint16_t*>(s.dst), got / 4);
            else
                std::memcpy(s.dst, dst, got);
        }
    }
}

}  // namespace featstore

// Shared by the feature-store sources: error types (translated to Python exceptions in
// module.cpp), checked system-call helpers, and the on-disk layout of a feature store.
//
// Store layout (little-endian, every section 64-byte aligned; version 1):
//   Header (256 bytes at offset 0): magic "LXFSTORE", version, dtype (1 = float16, 2 = float32),
//   num_images N, num_boxes T (all images), feature dim D, file size, section offsets.
//   Sections: features [T, D] dtype, boxes [T, 4] f32 (pixels), objects_id [T] i64,
//   objects_conf [T] f32, attrs_id [T] i64, attrs_conf [T] f32, box_start [N + 1] u64 (image i
//   owns boxes box_start[i] .. box_start[i + 1]), img_h [N] i64, img_w [N] i64,
//   id_offsets [N + 1] u64 into id_blob (ASCII img_ids), sorted [N] i64 (record indices in
//   byte-wise img_id order: the img_id -> record index, searched in place).
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the feature store is little-endian; this host is not"
#endif

namespace featstore {

// A malformed TSV line; the message names file, line, byte offset and img_id.
struct FormatError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A feature store that is not a valid store (magic, version, truncation, inconsistent sections).
struct StoreError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A failed system call: errno, the file it concerned and what was being done.
struct IoError : std::runtime_error {
    int err;
    std::string path;
    IoError(int e, std::string p, const std::string& what)
        : std::runtime_error(what), err(e), path(std::move(p)) {}
};

// Raise IoError for the current errno.
[[noreturn]] void throw_errno(const std::string& path, const std::string& what);

// Read exactly `len` bytes at `offset` (retries short reads and EINTR); returns bytes read,
// which is less than len only at end of file.
size_t pread_full(int fd, void* buf, size_t len, uint64_t offset, const std::string& path);
// Write exactly `len` bytes at `offset` (retries short writes and EINTR).
void pwrite_full(int fd, const void* buf, size_t len, uint64_t offset, const std::string& path);

constexpr char kMagic[8] = {'L', 'X', 'F', 'S', 'T', 'O', 'R', 'E'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kFloat16 = 1;
constexpr uint32_t kFloat32 = 2;
constexpr uint64_t kAlign = 64;
constexpr uint64_t kHeaderSize = 4096;  // features start on their own page

enum Section : int {
    kFeatures, kBoxes, kObjectsId, kObjectsConf, kAttrsId, kAttrsConf,
    kBoxStart, kImgH, kImgW, kIdOffsets, kIdBlob, kSorted, kNumSections
};

struct Header {
    char magic[8];
    uint32_t version;
    uint32_t dtype;
    uint64_t num_images;
    uint64_t num_boxes;
    uint64_t feature_dim;
    uint64_t file_size;
    uint64_t offsets[kNumSections];
    uint8_t reserved[256 - 48 - 8 * kNumSections];
};
static_assert(sizeof(Header) == 256, "store header must be 256 bytes");

inline uint64_t align_up(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }
inline uint64_t dtype_size(uint32_t dtype) { return dtype == kFloat16 ? 2 : 4; }

}  // namespace featstore

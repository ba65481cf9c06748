// A feature store opened read-only through mmap (layout in common.h): validation on open,
// img_id lookup by binary search over the stored sorted index, multi-threaded gathering of
// padded batches into caller-provided buffers, and a size check against later truncation.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common.h"

namespace featstore {

// The mapped file and its descriptor, kept open to notice truncation (Store::check_size).
struct Mapping {
    void* base = nullptr;
    size_t size = 0;
    int fd = -1;
    Mapping() = default;
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    ~Mapping();
};

// Destinations of one batch of B rows (see lxmert_fast/features/batch.py for the layout).
struct GatherOut {
    void* features;      // [B, max_boxes, D] in the store's dtype
    float* boxes;        // [B, max_boxes, 4]
    bool* box_mask;      // [B, max_boxes]
    int64_t* objects_id;
    float* objects_conf;
    int64_t* attrs_id;
    float* attrs_conf;
    int64_t* num_boxes;  // [B]
    int64_t* img_h;
    int64_t* img_w;
};

class Store {
  public:
    explicit Store(const std::string& path);
    const Header& header() const { return header_; }
    const std::string& path() const { return path_; }
    const std::shared_ptr<Mapping>& mapping() const { return map_; }
    const uint8_t* section(Section s) const;
    uint64_t section_size(Section s) const { return sizes_[s]; }
    // Throw StoreError if the file is now shorter than the mapping (truncated after opening):
    // reading a page past its end would raise SIGBUS. One fstat; gather() calls it, the
    // bindings call it before lookups and views. A truncation racing a read is not caught.
    void check_size() const;
    std::string_view id(uint64_t i) const;
    int64_t lookup(std::string_view img_id) const;  // -1 when absent; no check_size
    // Rows idx[0..B) (each < num_images, checked by the caller) into `out`.
    void gather(const int64_t* idx, size_t batch, int64_t max_boxes, const GatherOut& out,
                int num_threads) const;

  private:
    void validate_sections(uint64_t actual_size);
    void validate_index();
    void gather_rows(const int64_t* idx, size_t begin, size_t end, int64_t max_boxes,
                     const GatherOut& out) const;
    [[noreturn]] void fail(const std::string& what) const;

    std::string path_;
    Header header_;
    std::shared_ptr<Mapping> map_;
    uint64_t sizes_[kNumSections] = {};
    const uint64_t* box_start_ = nullptr;
    const uint64_t* id_offsets_ = nullptr;
    const int64_t* sorted_ = nullptr;
};

}  // namespace featstore

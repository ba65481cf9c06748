// Opening, validating, searching and gathering from a memory-mapped feature store (store.h).
#include "store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <thread>
#include <vector>

namespace featstore {

Mapping::~Mapping() {
    if (base != nullptr) ::munmap(base, size);
    if (fd >= 0) ::close(fd);
}

void Store::fail(const std::string& what) const {
    throw StoreError(path_ + ": " + what);
}

Store::Store(const std::string& path) : path_(path) {
    map_ = std::make_shared<Mapping>();
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw_errno(path, "cannot open feature store " + path);
    map_->fd = fd;  // closed with the mapping
    struct stat st;
    if (::fstat(fd, &st) != 0) throw_errno(path, "cannot stat feature store " + path);
    if (S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        throw_errno(path, "feature store " + path + " is a directory");
    }
    uint64_t actual = uint64_t(st.st_size);
    if (actual < sizeof(Header))
        fail("not a feature store: " + std::to_string(actual) + " bytes, smaller than the " +
             std::to_string(sizeof(Header)) + "-byte header (truncated or empty file)");
    if (pread_full(fd, &header_, sizeof(Header), 0, path) != sizeof(Header))
        fail("could not read the header (file shrank while opening)");
    if (std::memcmp(header_.magic, kMagic, sizeof(kMagic)) != 0)
        fail("not an lxmert_fast feature store (bad magic at byte offset 0; convert TSV files "
             "with `python -m lxmert_fast.features convert`)");
    if (header_.version != kVersion)
        fail("store format version " + std::to_string(header_.version) +
             ", this build reads version " + std::to_string(kVersion) + " (re-convert the TSV)");
    if (header_.dtype != kFloat16 && header_.dtype != kFloat32)
        fail("unknown feature dtype code " + std::to_string(header_.dtype) + " in the header");
    if (actual < header_.file_size)
        fail("truncated: the header says " + std::to_string(header_.file_size) +
             " bytes, the file has " + std::to_string(actual) + " (incomplete copy?)");
    if (actual > header_.file_size)
        fail("the file has " + std::to_string(actual) + " bytes, the header says " +
             std::to_string(header_.file_size) + " (trailing data)");
    validate_sections(actual);
    void* base = ::mmap(nullptr, actual, PROT_READ, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) throw_errno(path, "mmap of feature store " + path + " failed");
    map_->base = base;
    map_->size = actual;
    validate_index();
}

void Store::validate_sections(uint64_t actual) {
    const uint64_t n = header_.num_images, t = header_.num_boxes, d = header_.feature_dim;
    if (n == 0 || n > (uint64_t(1) << 40) || t > (uint64_t(1) << 44) || d > (uint64_t(1) << 24))
        fail("implausible counts in the header: num_images " + std::to_string(n) +
             ", num_boxes " + std::to_string(t) + ", feature_dim " + std::to_string(d));
    uint64_t feat_bytes = 0;
    if (__builtin_mul_overflow(t * d, dtype_size(header_.dtype), &feat_bytes) ||
        feat_bytes > actual)
        fail("features section of " + std::to_string(t) + " x " + std::to_string(d) +
             " does not fit in the " + std::to_string(actual) + "-byte file (truncated?)");
    const uint64_t sizes[kNumSections] = {feat_bytes, t * 16, t * 8, t * 4,
                                          t * 8, t * 4, (n + 1) * 8, n * 8, n * 8, (n + 1) * 8,
                                          0, n * 8};
    for (int s = 0; s < kNumSections; ++s) {
        uint64_t off = header_.offsets[s];
        sizes_[s] = sizes[s];
        if (off % kAlign != 0 || off < sizeof(Header) || off > actual || sizes[s] > actual - off)
            fail("section " + std::to_string(s) + " (byte offset " + std::to_string(off) + ", " +
                 std::to_string(sizes[s]) + " bytes) lies outside the " +
                 std::to_string(actual) + "-byte file (corrupt header)");
    }
}

void Store::validate_index() {
    const uint64_t n = header_.num_images, t = header_.num_boxes;
    box_start_ = reinterpret_cast<const uint64_t*>(section(kBoxStart));
    id_offsets_ = reinterpret_cast<const uint64_t*>(section(kIdOffsets));
    sorted_ = reinterpret_cast<const int64_t*>(section(kSorted));
    if (box_start_[0] != 0 || box_start_[n] != t)
        fail("box index does not cover the " + std::to_string(t) + " boxes (corrupt store)");
    for (uint64_t i = 0; i < n; ++i) {
        if (box_start_[i + 1] < box_start_[i])
            fail("box index decreases at record " + std::to_string(i) + " (corrupt store)");
        if (id_offsets_[i + 1] <= id_offsets_[i])
            fail("img_id index is not increasing at record " + std::to_string(i) +
                 " (corrupt store)");
        if (sorted_[i] < 0 || uint64_t(sorted_[i]) >= n)
            fail("sorted index entry " + std::to_string(i) + " is out of range (corrupt store)");
    }
    uint64_t off = header_.offsets[kIdBlob];
    if (id_offsets_[0] != 0 || id_offsets_[n] > map_->size - off)
        fail("img_id bytes lie outside the file (corrupt store)");
    sizes_[kIdBlob] = id_offsets_[n];
}

void Store::check_size() const {
    struct stat st;
    if (::fstat(map_->fd, &st) != 0) throw_errno(path_, "cannot stat feature store " + path_);
    if (uint64_t(st.st_size) < map_->size)
        fail("the file was truncated after it was opened: " + std::to_string(map_->size) +
             " bytes expected (mapped), " + std::to_string(uint64_t(st.st_size)) +
             " bytes now (rewritten in place? replace a store by renaming a new file over it, "
             "then open it again)");
}

const uint8_t* Store::section(Section s) const {
    return static_cast<const uint8_t*>(map_->base) + header_.offsets[s];
}

std::string_view Store::id(uint64_t i) const {
    const char* blob = reinterpret_cast<const char*>(section(kIdBlob));
    return std::string_view(blob + id_offsets_[i], id_offsets_[i + 1] - id_offsets_[i]);
}

int64_t Store::lookup(std::string_view img_id) const {
    uint64_t lo = 0, hi = header_.num_images;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        std::string_view v = id(uint64_t(sorted_[mid]));
        if (v < img_id) lo = mid + 1;
        else hi = mid;
    }
    if (lo < header_.num_images && id(uint64_t(sorted_[lo])) == img_id) return sorted_[lo];
    return -1;
}

void Store::gather_rows(const int64_t* idx, size_t begin, size_t end, int64_t max_boxes,
                        const GatherOut& out) const {
    const uint64_t m = uint64_t(max_boxes);
    const uint64_t row = header_.feature_dim * dtype_size(header_.dtype);
    const uint8_t* feats = section(kFeatures);
    const float* boxes = reinterpret_cast<const float*>(section(kBoxes));
    const int64_t* obj_id = reinterpret_cast<const int64_t*>(section(kObjectsId));
    const float* obj_conf = reinterpret_cast<const float*>(section(kObjectsConf));
    const int64_t* attr_id = reinterpret_cast<const int64_t*>(section(kAttrsId));
    const float* attr_conf = reinterpret_cast<const float*>(section(kAttrsConf));
    const int64_t* img_h = reinterpret_cast<const int64_t*>(section(kImgH));
    const int64_t* img_w = reinterpret_cast<const int64_t*>(section(kImgW));
    for (size_t b = begin; b < end; ++b) {
        const uint64_t i = uint64_t(idx[b]), s = box_start_[i];
        const uint64_t n = std::min(box_start_[i + 1] - s, m);
        uint8_t* fo = static_cast<uint8_t*>(out.features) + b * m * row;
        std::memcpy(fo, feats + s * row, n * row);
        std::memset(fo + n * row, 0, (m - n) * row);
        const float w = float(img_w[i]), h = float(img_h[i]);
        float* bo = out.boxes + b * m * 4;
        for (uint64_t k = 0; k < n; ++k) {
            const float* src = boxes + (s + k) * 4;
            bo[4 * k] = src[0] / w;
            bo[4 * k + 1] = src[1] / h;
            bo[4 * k + 2] = src[2] / w;
            bo[4 * k + 3] = src[3] / h;
        }
        std::memset(bo + 4 * n, 0, (m - n) * 16);
        std::memset(out.box_mask + b * m, 1, n);
        std::memset(out.box_mask + b * m + n, 0, m - n);
        auto copy = [&](auto* dst, const auto* src) {
            std::memcpy(dst + b * m, src + s, n * sizeof(*src));
            std::memset(dst + b * m + n, 0, (m - n) * sizeof(*src));
        };
        copy(out.objects_id, obj_id);
        copy(out.objects_conf, obj_conf);
        copy(out.attrs_id, attr_id);
        copy(out.attrs_conf, attr_conf);
        out.num_boxes[b] = int64_t(n);
        out.img_h[b] = img_h[i];
        out.img_w[b] = img_w[i];
    }
}

void Store::gather(const int64_t* idx, size_t batch, int64_t max_boxes, const GatherOut& out,
                   int num_threads) const {
    check_size();
    size_t threads = size_t(std::max(1, num_threads));
    threads = std::min(threads, std::max<size_t>(1, batch / 8));
    if (threads <= 1) {
        gather_rows(idx, 0, batch, max_boxes, out);
        return;
    }
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    size_t per = (batch + threads - 1) / threads;
    try {
        for (size_t t = 1; t < threads; ++t) {
            size_t b0 = std::min(batch, t * per), b1 = std::min(batch, (t + 1) * per);
            pool.emplace_back([=, &out] { gather_rows(idx, b0, b1, max_boxes, out); });
        }
    } catch (...) {
        for (std::thread& th : pool) th.join();
        throw;
    }
    gather_rows(idx, 0, std::min(batch, per), max_boxes, out);
    for (std::thread& th : pool) th.join();
}

}  // namespace featstore

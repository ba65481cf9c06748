// TSV -> feature store conversion, output side (convert.h, converter.h): the temporary file,
// the layout of the sections (common.h), the small per-box arrays, the id index and the header
// written after the features, then fsync, rename over the output and fsync of the directory.
// On any error the temporary file is removed; an existing output is never touched.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <numeric>
#include <string_view>

#include "converter.h"

namespace featstore {
namespace detail {

void Converter::stop_workers() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        closing_ = true;
    }
    cv_work_.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
}

void Converter::cleanup() {
    if (!workers_.empty()) stop_workers();
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
    tmp_.clear();
}

ConvertStats Converter::run() {
    for (const std::string& p : paths_) {
        struct stat st;
        if (::stat(p.c_str(), &st) != 0) throw_errno(p, "cannot read feature TSV " + p);
        if (S_ISDIR(st.st_mode)) {
            errno = EISDIR;
            throw_errno(p, "feature TSV " + p + " is a directory");
        }
    }
    tmp_ = out_ + ".tmp." + std::to_string(::getpid()) + "." +
           std::to_string(uintptr_t(this) & 0xFFFFFF);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) {
        std::string t = tmp_;
        tmp_.clear();
        throw_errno(t, "cannot create the store's temporary file " + t);
    }
    for (int i = 0; i < threads_; ++i) workers_.emplace_back([this] { worker(); });
    try {
        for (uint32_t f = 0; f < paths_.size() && !failed(); ++f) read_file(f);
    } catch (const IoError&) {
        record_error(0, std::current_exception());
    }
    stop_workers();
    if (error_) std::rethrow_exception(error_);
    stats_.num_images = img_h_.size();
    if (stats_.num_images == 0) {
        std::string all;
        for (const std::string& p : paths_) all += (all.empty() ? "" : ", ") + p;
        throw FormatError("no images in " + all + " (empty or blank files)");
    }
    stats_.feature_dim = dim_ > 0 ? uint64_t(dim_) : 0;
    write_tail();
    finish_file();
    return stats_;
}

void Converter::finish_file() {
    if (::fsync(fd_) != 0) throw_errno(tmp_, "fsync failed");
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw_errno(tmp_, "close failed");
    if (::rename(tmp_.c_str(), out_.c_str()) != 0)
        throw_errno(out_, "cannot rename " + tmp_ + " to " + out_);
    tmp_.clear();
    std::string dir = out_.find('/') == std::string::npos ? "." : out_.substr(0, out_.rfind('/'));
    int dfd = ::open(dir.empty() ? "/" : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        int rc = ::fsync(dfd);
        int e = errno;
        ::close(dfd);
        if (rc != 0 && e != EINVAL) { errno = e; throw_errno(dir, "fsync of the directory failed"); }
    }
}

void Converter::write_tail() {
    const uint64_t n = stats_.num_images, t = stats_.num_boxes, d = stats_.feature_dim;
    Header h;
    std::memset(&h, 0, sizeof(h));
    std::memcpy(h.magic, kMagic, sizeof(kMagic));
    h.version = kVersion;
    h.dtype = dtype_;
    h.num_images = n;
    h.num_boxes = t;
    h.feature_dim = d;
    const uint64_t sizes[kNumSections] = {t * d * dtype_size(dtype_), t * 16, t * 8, t * 4, t * 8,
                                          t * 4, (n + 1) * 8, n * 8, n * 8, (n + 1) * 8,
                                          id_blob_.size(), n * 8};
    uint64_t pos = kHeaderSize;
    for (int s = 0; s < kNumSections; ++s) {
        pos = align_up(pos);
        h.offsets[s] = pos;
        pos += sizes[s];
    }
    h.file_size = pos;
    for (const auto& c : done_) {
        if (c->box_count == 0) continue;
        uint64_t b = c->box_begin;
        pwrite_full(fd_, c->boxes.data(), c->box_count * 16, h.offsets[kBoxes] + b * 16, tmp_);
        pwrite_full(fd_, c->objects_id.data(), c->box_count * 8, h.offsets[kObjectsId] + b * 8, tmp_);
        pwrite_full(fd_, c->objects_conf.data(), c->box_count * 4, h.offsets[kObjectsConf] + b * 4, tmp_);
        pwrite_full(fd_, c->attrs_id.data(), c->box_count * 8, h.offsets[kAttrsId] + b * 8, tmp_);
        pwrite_full(fd_, c->attrs_conf.data(), c->box_count * 4, h.offsets[kAttrsConf] + b * 4, tmp_);
    }
    std::vector<int64_t> sorted(n);
    std::iota(sorted.begin(), sorted.end(), 0);
    auto id_of = [&](int64_t i) {
        return std::string_view(id_blob_.data() + id_offsets_[i], id_offsets_[i + 1] - id_offsets_[i]);
    };
    std::sort(sorted.begin(), sorted.end(), [&](int64_t a, int64_t b) { return id_of(a) < id_of(b); });
    pwrite_full(fd_, box_start_.data(), sizes[kBoxStart], h.offsets[kBoxStart], tmp_);
    pwrite_full(fd_, img_h_.data(), sizes[kImgH], h.offsets[kImgH], tmp_);
    pwrite_full(fd_, img_w_.data(), sizes[kImgW], h.offsets[kImgW], tmp_);
    pwrite_full(fd_, id_offsets_.data(), sizes[kIdOffsets], h.offsets[kIdOffsets], tmp_);
    pwrite_full(fd_, id_blob_.data(), sizes[kIdBlob], h.offsets[kIdBlob], tmp_);
    pwrite_full(fd_, sorted.data(), sizes[kSorted], h.offsets[kSorted], tmp_);
    if (::ftruncate(fd_, off_t(h.file_size)) != 0) throw_errno(tmp_, "ftruncate failed");
    pwrite_full(fd_, &h, sizeof(h), 0, tmp_);
    stats_.file_size = h.file_size;
}

}  // namespace detail

ConvertStats convert_tsv(const std::vector<std::string>& paths, const std::string& out_path,
                         uint32_t dtype, int num_threads, const ProgressFn& progress) {
    if (dtype != kFloat16 && dtype != kFloat32)
        throw std::invalid_argument("dtype code must be 1 (float16) or 2 (float32), got " +
                                    std::to_string(dtype));
    detail::Converter conv(paths, out_path, dtype, num_threads, progress);
    return conv.run();
}

}  // namespace featstore

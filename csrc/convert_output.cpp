// TSV -> feature store conversion, output side (convert.h, converter.h): the temporary file
// (after removing stale ones of dead writers), the layout of the sections (common.h), the small
// per-box arrays, the id index and the header written after the features, then (durable) fsync,
// rename over the output and (durable) fsync of the directory.
// On any error the temporary file is removed; an existing output is never touched.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <numeric>
#include <string_view>

#include "converter.h"

namespace featstore {
namespace detail {

std::pair<std::string, std::string> split_path(const std::string& path) {
    size_t slash = path.rfind('/');
    if (slash == std::string::npos) return {".", path};
    return {slash == 0 ? "/" : path.substr(0, slash), path.substr(slash + 1)};
}

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
    create_temp();
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

void Converter::create_temp() {
    featstore::remove_stale_temps(out_);
    tmp_ = out_ + ".tmp." + std::to_string(::getpid()) + "." +
           std::to_string(uintptr_t(this) & 0xFFFFFF);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) {
        std::string t = tmp_;
        tmp_.clear();
        throw_errno(t, "cannot create the store's temporary file " + t);
    }
}

void Converter::finish_file() {
    if (durable_ && ::fsync(fd_) != 0) throw_errno(tmp_, "fsync failed");
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw_errno(tmp_, "close failed");
    if (::rename(tmp_.c_str(), out_.c_str()) != 0)
        throw_errno(out_, "cannot rename " + tmp_ + " to " + out_);
    tmp_.clear();
    if (!durable_) return;
    const std::string dir = split_path(out_).first;
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
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

namespace {

// The <pid> of "<prefix><pid>.<n>" (both decimal), or -1 when `name` is not such a name.
long temp_writer_pid(std::string_view name, std::string_view prefix) {
    if (name.size() <= prefix.size() || name.substr(0, prefix.size()) != prefix) return -1;
    name.remove_prefix(prefix.size());
    size_t dot = name.find('.');
    if (dot == 0 || dot == std::string_view::npos || dot > 9 || dot + 1 == name.size())
        return -1;
    long pid = 0;
    for (size_t i = 0; i < name.size(); ++i) {
        if (i == dot) continue;
        if (name[i] < '0' || name[i] > '9') return -1;
        if (i < dot) pid = pid * 10 + (name[i] - '0');
    }
    return pid;
}

}  // namespace

int remove_stale_temps(const std::string& out) {
    auto [dir, base] = detail::split_path(out);
    const std::string prefix = base + ".tmp.";
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return 0;  // creating the temporary file reports the problem
    int removed = 0;
    while (const dirent* e = ::readdir(d)) {
        long pid = temp_writer_pid(e->d_name, prefix);
        if (pid <= 0 || pid == long(::getpid())) continue;
        if (::kill(pid_t(pid), 0) == 0 || errno != ESRCH) continue;  // alive (or not ours)
        if (::unlinkat(::dirfd(d), e->d_name, 0) == 0) ++removed;
    }
    ::closedir(d);
    return removed;
}

ConvertStats convert_tsv(const std::vector<std::string>& paths, const std::string& out_path,
                         uint32_t dtype, int num_threads, const ProgressFn& progress,
                         bool durable) {
    if (dtype != kFloat16 && dtype != kFloat32)
        throw std::invalid_argument("dtype code must be 1 (float16) or 2 (float32), got " +
                                    std::to_string(dtype));
    detail::Converter conv(paths, out_path, dtype, num_threads, progress, durable);
    return conv.run();
}

}  // namespace featstore

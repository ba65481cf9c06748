// TSV -> feature store conversion (convert.h). The calling thread reads each file in large
// blocks, splits lines, runs the cheap per-line checks (field count, integers, duplicate img_id,
// feature dimension) and assigns every line its place in the store; worker threads decode the
// base64 arrays of chunks of lines in parallel and write the features straight to their final
// offset (pwrite). The small per-box arrays, the index and the header are written last, then
// the file is fsync'ed and renamed. The first error in file order wins, whichever thread saw it.
#include "convert.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <numeric>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "common.h"
#include "tsv_line.h"

namespace featstore {
namespace {

constexpr size_t kBlockSize = size_t(4) << 20;
constexpr size_t kChunkBytes = size_t(1) << 20;
constexpr size_t kMaxLine = 0xFFFFFFFFu;

// Reused read buffers: a fresh 4 MiB allocation per block would cost ~1000 page faults.
class BlockPool {
  public:
    std::unique_ptr<char[]> take(size_t cap) {
        std::lock_guard<std::mutex> lock(mu_);
        if (cap == kBlockSize && !free_.empty()) {
            std::unique_ptr<char[]> b = std::move(free_.back());
            free_.pop_back();
            return b;
        }
        return std::unique_ptr<char[]>(new char[cap]);  // not zero-filled
    }
    void give(std::unique_ptr<char[]> b, size_t cap) {
        std::lock_guard<std::mutex> lock(mu_);
        if (cap == kBlockSize && free_.size() < 8) free_.push_back(std::move(b));
    }

  private:
    std::mutex mu_;
    std::vector<std::unique_ptr<char[]>> free_;
};

struct Block {
    Block(BlockPool* pool, size_t cap) : data(pool->take(cap)), cap(cap), pool(pool) {}
    ~Block() { pool->give(std::move(data), cap); }
    std::unique_ptr<char[]> data;
    size_t cap;
    BlockPool* pool;
    size_t len = 0;
};

// A worker's reusable buffers (grown, never shrunk, so steady state allocates nothing).
struct WorkerBuffers {
    std::vector<uint8_t> features, scratch;
};

struct Chunk {
    uint64_t seq = 0, key = 0, box_begin = 0, box_count = 0;
    int64_t dim = -1;  // the store's feature dimension when the chunk was queued
    std::shared_ptr<Block> block;
    std::vector<LineJob> lines;
    std::vector<float> boxes, objects_conf, attrs_conf;
    std::vector<int64_t> objects_id, attrs_id;
};

uint64_t line_key(uint32_t file, uint64_t line_no) { return (uint64_t(file) << 40) | line_no; }

bool is_blank(const char* p, size_t n) {
    for (size_t i = 0; i < n; ++i)
        if (!(p[i] == ' ' || (p[i] >= '\t' && p[i] <= '\r'))) return false;
    return true;
}

class Converter {
  public:
    Converter(const std::vector<std::string>& paths, const std::string& out, uint32_t dtype,
              int threads, const ProgressFn& progress)
        : paths_(paths), out_(out), dtype_(dtype), threads_(std::max(1, threads)),
          progress_(progress) {}
    ~Converter() { cleanup(); }
    ConvertStats run();

  private:
    void read_file(uint32_t file);
    void add_line(const std::shared_ptr<Block>& block, size_t begin, size_t end, uint32_t file,
                  uint64_t line_no, uint64_t offset);
    void check_line(const std::string& path, const LineJob& job);
    void flush_chunk();
    void worker();
    void process(Chunk* chunk, WorkerBuffers* buf);
    void record_error(uint64_t key, std::exception_ptr e);
    bool failed();
    void stop_workers();
    void write_tail();
    void cleanup();

    const std::vector<std::string>& paths_;
    std::string out_, tmp_;
    uint32_t dtype_;
    int threads_;
    const ProgressFn& progress_;
    int fd_ = -1;
    BlockPool pool_;
    ConvertStats stats_;
    int64_t dim_ = -1;
    // Per image, built by the reading thread.
    std::vector<uint64_t> box_start_{0}, id_offsets_{0};
    std::vector<int64_t> img_h_, img_w_;
    std::string id_blob_;
    std::unordered_map<std::string, std::pair<uint32_t, uint64_t>> seen_;
    std::vector<uint8_t> check_scratch_;
    // Work queue and results.
    std::unique_ptr<Chunk> current_;
    std::mutex mu_;
    std::condition_variable cv_work_, cv_space_;
    std::deque<std::unique_ptr<Chunk>> queue_;
    std::vector<std::unique_ptr<Chunk>> done_;
    size_t in_flight_ = 0;
    bool closing_ = false;
    std::vector<std::thread> workers_;
    std::atomic<bool> failed_{false};
    uint64_t error_key_ = UINT64_MAX;
    std::exception_ptr error_;
};

void Converter::record_error(uint64_t key, std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_ || key < error_key_) {
        error_key_ = key;
        error_ = e;
    }
    failed_ = true;
    cv_space_.notify_all();
}

bool Converter::failed() { return failed_.load(); }

void Converter::worker() {
    WorkerBuffers buf;
    for (;;) {
        std::unique_ptr<Chunk> chunk;
        bool skip;
        {
            std::unique_lock<std::mutex> lock(mu_);
            cv_work_.wait(lock, [&] { return !queue_.empty() || closing_; });
            if (queue_.empty()) return;
            chunk = std::move(queue_.front());
            queue_.pop_front();
            skip = error_ && chunk->key > error_key_;
        }
        if (!skip) {
            try {
                process(chunk.get(), &buf);
            } catch (...) {
                record_error(0, std::current_exception());
            }
        }
        chunk->block.reset();
        chunk->lines = std::vector<LineJob>();
        std::lock_guard<std::mutex> lock(mu_);
        --in_flight_;
        done_[chunk->seq] = std::move(chunk);
        cv_space_.notify_all();
    }
}

void Converter::process(Chunk* c, WorkerBuffers* buf) {
    const uint64_t isz = dtype_size(dtype_);
    const uint64_t d = c->dim > 0 ? uint64_t(c->dim) : 0;
    const uint64_t feat_bytes = c->box_count * d * isz;
    if (buf->features.size() < feat_bytes) buf->features.resize(feat_bytes);
    uint8_t* feats = buf->features.data();
    c->boxes.resize(c->box_count * 4);
    c->objects_conf.resize(c->box_count);
    c->attrs_conf.resize(c->box_count);
    c->objects_id.resize(c->box_count);
    c->attrs_id.resize(c->box_count);
    uint64_t b = 0;
    for (const LineJob& job : c->lines) {
        LineOut out{c->objects_id.data() + b, c->objects_conf.data() + b, c->attrs_id.data() + b,
                    c->attrs_conf.data() + b, c->boxes.data() + 4 * b,
                    feats + b * d * isz, dtype_ == kFloat16};
        try {
            decode_line(paths_[job.file], job, c->dim, out, &buf->scratch);
        } catch (const FormatError&) {
            record_error(line_key(job.file, job.line_no), std::current_exception());
            return;
        }
        b += uint64_t(job.num_boxes);
    }
    if (feat_bytes > 0)
        pwrite_full(fd_, feats, feat_bytes, kHeaderSize + c->box_begin * d * isz, tmp_);
}

void Converter::flush_chunk() {
    if (!current_ || current_->lines.empty()) return;
    std::unique_ptr<Chunk> chunk = std::move(current_);
    chunk->dim = dim_;
    std::unique_lock<std::mutex> lock(mu_);
    cv_space_.wait(lock, [&] { return in_flight_ < size_t(4 * threads_) || failed(); });
    chunk->seq = done_.size();
    done_.emplace_back();
    ++in_flight_;
    queue_.push_back(std::move(chunk));
    cv_work_.notify_one();
}

void Converter::check_line(const std::string& path, const LineJob& job) {
    std::string id(job.text + job.start[fImgId], job.size[fImgId]);
    std::string problem;
    auto it = seen_.find(id);
    if (id.empty()) problem = "empty img_id";
    else if (it != seen_.end())
        problem = "duplicate img_id (first seen in " + paths_[it->second.first] + ": line " +
                  std::to_string(it->second.second) + ")";
    else if (job.oversized >= 0)
        problem = std::string("field ") + (job.oversized == fImgH ? "img_h" : "img_w") + "=" +
                  std::string(job.text + job.start[job.oversized], job.size[job.oversized]) +
                  " is too large (more than 63 bits)";
    else if (job.img_h == 0) problem = "field img_h=0, image size must be positive";
    else if (job.img_w == 0) problem = "field img_w=0, image size must be positive";
    else if (job.num_boxes > 0 && job.feature_dim <= 0) problem = "field features: bad size";
    else if (job.num_boxes > 0 && dim_ > 0 && job.feature_dim != dim_)
        problem = "feature dimension " + std::to_string(job.feature_dim) +
                  " differs from the earlier images' " + std::to_string(dim_);
    if (problem.empty()) return;
    // Report what tsv.py would report first: an error inside the line's arrays.
    LineOut none{nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, false};
    decode_line(path, job, -1, none, &check_scratch_);
    fail_line(path, job, problem);
}

void Converter::add_line(const std::shared_ptr<Block>& block, size_t begin, size_t end,
                         uint32_t file, uint64_t line_no, uint64_t offset) {
    const char* text = block->data.get() + begin;
    size_t len = end - begin;
    if (is_blank(text, len)) return;
    while (len > 0 && text[len - 1] == '\r') --len;
    LineJob job;
    job.text = text;
    job.len = len;
    job.file = file;
    job.line_no = line_no;
    job.offset = offset;
    try {
        parse_prefix(paths_[file], &job);
        check_line(paths_[file], job);
    } catch (const FormatError&) {
        record_error(line_key(file, line_no), std::current_exception());
        return;
    }
    if (job.num_boxes > 0 && dim_ < 0) dim_ = job.feature_dim;
    std::string id(text + job.start[fImgId], job.size[fImgId]);
    id_blob_ += id;
    id_offsets_.push_back(id_blob_.size());
    seen_.emplace(std::move(id), std::make_pair(file, line_no));
    img_h_.push_back(job.img_h);
    img_w_.push_back(job.img_w);
    stats_.num_boxes += uint64_t(job.num_boxes);
    box_start_.push_back(stats_.num_boxes);
    if (!current_) {
        current_.reset(new Chunk());
        current_->block = block;
        current_->key = line_key(file, line_no);
        current_->box_begin = stats_.num_boxes - uint64_t(job.num_boxes);
    }
    current_->box_count += uint64_t(job.num_boxes);
    current_->lines.push_back(job);
    if (size_t(text + len - current_->lines.front().text) >= kChunkBytes ||
        current_->lines.size() >= 4096)
        flush_chunk();
}

void Converter::read_file(uint32_t file) {
    const std::string& path = paths_[file];
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw_errno(path, "cannot open feature TSV " + path);
    struct FdGuard { int fd; ~FdGuard() { ::close(fd); } } guard{fd};
    auto block = std::make_shared<Block>(&pool_, kBlockSize);
    uint64_t block_offset = 0, line_no = 0, pos = 0;
    size_t scan = 0;  // start of the first unfinished line in block
    for (bool eof = false; !eof && !failed();) {
        if (block->len == block->cap) {
            // The unfinished line fills the block: move it to a larger one.
            size_t rest = block->len - scan;
            if (rest >= kMaxLine)
                throw FormatError(path + ": line " + std::to_string(line_no + 1) +
                                  " (byte offset " + std::to_string(block_offset + scan) +
                                  "): longer than 4 GiB (no newline)");
            flush_chunk();
            auto next = std::make_shared<Block>(&pool_, std::max(kBlockSize, rest * 2));
            std::memcpy(next->data.get(), block->data.get() + scan, rest);
            next->len = rest;
            block_offset += scan;
            block = next;
            scan = 0;
        }
        size_t got = pread_full(fd, block->data.get() + block->len, block->cap - block->len, pos,
                                path);
        pos += got;
        block->len += got;
        stats_.bytes_read += got;
        eof = got == 0;
        const char* base = block->data.get();
        for (;;) {
            const void* nl = std::memchr(base + scan, '\n', block->len - scan);
            if (!nl && !(eof && scan < block->len)) break;
            size_t end = nl ? size_t(static_cast<const char*>(nl) - base) : block->len;
            if (end - scan >= kMaxLine)
                throw FormatError(path + ": line " + std::to_string(line_no + 1) +
                                  ": longer than 4 GiB");
            add_line(block, scan, end, file, ++line_no, block_offset + scan);
            scan = nl ? end + 1 : end;
            if (failed()) {
                flush_chunk();  // lines before the error must still be checked
                return;
            }
        }
        if (progress_) progress_(stats_.bytes_read);
        if (!eof && scan > 0 && block->len - scan < block->cap / 2) {
            // Continue in a fresh block (workers still read the old one).
            flush_chunk();
            auto next = std::make_shared<Block>(&pool_, kBlockSize);
            size_t rest = block->len - scan;
            std::memcpy(next->data.get(), base + scan, rest);
            next->len = rest;
            block_offset += scan;
            block = next;
            scan = 0;
        }
    }
    flush_chunk();
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
    return stats_;
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

}  // namespace

ConvertStats convert_tsv(const std::vector<std::string>& paths, const std::string& out_path,
                         uint32_t dtype, int num_threads, const ProgressFn& progress) {
    if (dtype != kFloat16 && dtype != kFloat32)
        throw std::invalid_argument("dtype code must be 1 (float16) or 2 (float32), got " +
                                    std::to_string(dtype));
    Converter conv(paths, out_path, dtype, num_threads, progress);
    return conv.run();
}

}  // namespace featstore

// TSV -> feature store conversion, reading side (convert.h, converter.h). The calling thread
// reads each file in large blocks, splits lines, runs the cheap per-line checks (field count,
// integers, duplicate img_id, feature dimension) and assigns every line its place in the store;
// worker threads decode the base64 arrays of chunks of lines in parallel and write the features
// straight to their final offset (pwrite). The first error in file order wins, whichever thread
// saw it. convert_output.cpp writes the rest of the store and publishes it.
#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "converter.h"

namespace featstore {
namespace detail {
namespace {

uint64_t line_key(uint32_t file, uint64_t line_no) { return (uint64_t(file) << 40) | line_no; }

bool is_blank(const char* p, size_t n) {
    for (size_t i = 0; i < n; ++i)
        if (!(p[i] == ' ' || (p[i] >= '\t' && p[i] <= '\r'))) return false;
    return true;
}

}  // namespace

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
    if (feat_bytes > 0) {
        pwrite_full(fd_, feats, feat_bytes, kHeaderSize + c->box_begin * d * isz, tmp_);
        // Durable: start write-back of this block now (asynchronous), so the final fsync finds
        // little left to flush: the disk works while later blocks are being decoded.
        // Advisory: a failure here only means the final fsync has more to do.
        if (durable_)
            (void)::sync_file_range(fd_, off_t(kHeaderSize + c->box_begin * d * isz),
                                    off_t(feat_bytes), SYNC_FILE_RANGE_WRITE);
    }
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
    if (len >= kMaxLine) {
        record_error(line_key(file, line_no),
                     std::make_exception_ptr(FormatError(
                         paths_[file] + ": line " + std::to_string(line_no) + " (byte offset " +
                         std::to_string(offset) + "): longer than 4 GiB")));
        return;
    }
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

std::shared_ptr<Block> Converter::carry_over(const std::shared_ptr<Block>& block, size_t scan,
                                             size_t cap, uint64_t* block_offset) {
    flush_chunk();  // queued chunks keep the old block alive
    auto next = std::make_shared<Block>(&pool_, cap);
    size_t rest = block->len - scan;
    std::memcpy(next->data.get(), block->data.get() + scan, rest);
    next->len = rest;
    *block_offset += scan;
    return next;
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
        if (block->len == block->cap) {  // an unfinished line fills the block: grow
            if (block->len - scan >= kMaxLine)
                throw FormatError(path + ": line " + std::to_string(line_no + 1) +
                                  " (byte offset " + std::to_string(block_offset + scan) +
                                  "): longer than 4 GiB (no newline)");
            block = carry_over(block, scan, std::max(kBlockSize, (block->len - scan) * 2),
                               &block_offset);
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
            add_line(block, scan, end, file, ++line_no, block_offset + scan);
            scan = nl ? end + 1 : end;
            if (failed()) {
                flush_chunk();  // lines before the error must still be checked
                return;
            }
        }
        if (progress_) progress_(stats_.bytes_read);
        if (!eof && scan > 0 && block->len - scan < block->cap / 2) {
            block = carry_over(block, scan, kBlockSize, &block_offset);  // workers keep the old
            scan = 0;
        }
    }
    flush_chunk();
}

}  // namespace detail
}  // namespace featstore

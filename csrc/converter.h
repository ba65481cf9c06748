// Internals of the TSV -> store converter (convert.h), shared by convert.cpp (reading thread,
// work queue, workers) and convert_output.cpp (temporary file, layout, tail sections, header,
// fsync + rename).
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common.h"
#include "convert.h"
#include "tsv_line.h"

namespace featstore {
namespace detail {

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

// The directory holding `path` ("." for a bare name) and the name inside it.
std::pair<std::string, std::string> split_path(const std::string& path);

class Converter {
  public:
    Converter(const std::vector<std::string>& paths, const std::string& out, uint32_t dtype,
              int threads, const ProgressFn& progress, bool durable)
        : paths_(paths), out_(out), dtype_(dtype), threads_(std::max(1, threads)),
          progress_(progress), durable_(durable) {}
    ~Converter() { cleanup(); }
    ConvertStats run();

  private:
    void read_file(uint32_t file);
    std::shared_ptr<Block> carry_over(const std::shared_ptr<Block>& block, size_t scan,
                                      size_t cap, uint64_t* block_offset);
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
    void create_temp();
    void finish_file();
    void cleanup();

    const std::vector<std::string>& paths_;
    std::string out_, tmp_;
    uint32_t dtype_;
    int threads_;
    const ProgressFn& progress_;
    bool durable_;
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

}  // namespace detail
}  // namespace featstore

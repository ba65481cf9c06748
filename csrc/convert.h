// Conversion of LXMERT TSV files into a feature store (layout in common.h).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace featstore {

struct ConvertStats {
    uint64_t num_images = 0;
    uint64_t num_boxes = 0;
    uint64_t feature_dim = 0;
    uint64_t bytes_read = 0;
    uint64_t file_size = 0;
};

// Called on the calling thread after each block read, with the total bytes read so far.
// It may throw (e.g. to abort on Ctrl-C); the conversion then stops and cleans up.
using ProgressFn = std::function<void(uint64_t)>;

// Read every line of `paths` (in order) and write the store to `out_path`: written to a
// temporary name beside it, fsync'ed, then renamed. On any error the temporary file is removed
// and an existing `out_path` is left untouched. Lines are parsed by `num_threads` workers.
ConvertStats convert_tsv(const std::vector<std::string>& paths, const std::string& out_path,
                         uint32_t dtype, int num_threads, const ProgressFn& progress);

}  // namespace featstore

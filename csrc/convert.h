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
// temporary name beside it (`out_path`.tmp.<pid>.<n>), then renamed. With `durable` the data is
// flushed to disk (write-back started per block, fsync) before the rename and the directory is
// fsync'ed after it; without, it is left to the page cache (safe against a crash of the process,
// not of the OS). On any error the temporary file is removed and an existing `out_path` is left
// untouched. Temporary files of `out_path` left by writers that no longer run (a SIGKILLed
// conversion) are removed first. Lines are parsed by `num_threads` workers.
ConvertStats convert_tsv(const std::vector<std::string>& paths, const std::string& out_path,
                         uint32_t dtype, int num_threads, const ProgressFn& progress,
                         bool durable = true);

// Unlink `out_path`.tmp.<pid>.<n> files in its directory whose <pid> no longer runs
// (kill(pid, 0) fails with ESRCH): leftovers of a killed conversion. Files of live pids, of this
// process and of other outputs are kept; failures are ignored (they are only garbage). Pids are
// this host's: a writer on another host sharing the directory over NFS looks dead here.
// Returns the number of files removed.
int remove_stale_temps(const std::string& out_path);

}  // namespace featstore

// Checked system-call helpers (common.h): every result is checked, EINTR retried, short
// reads/writes continued, and failures raised as IoError naming the file, offset and errno.
#include <cerrno>
#include <cstring>
#include <unistd.h>

#include "common.h"

namespace featstore {

void throw_errno(const std::string& path, const std::string& what) {
    int e = errno;
    throw IoError(e, path, what + ": " + std::strerror(e));
}

size_t pread_full(int fd, void* buf, size_t len, uint64_t offset, const std::string& path) {
    size_t done = 0;
    while (done < len) {
        ssize_t r = ::pread(fd, static_cast<char*>(buf) + done, len - done, off_t(offset + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            throw_errno(path, "read failed at byte offset " + std::to_string(offset + done));
        }
        if (r == 0) break;
        done += size_t(r);
    }
    return done;
}

void pwrite_full(int fd, const void* buf, size_t len, uint64_t offset, const std::string& path) {
    size_t done = 0;
    while (done < len) {
        ssize_t r = ::pwrite(fd, static_cast<const char*>(buf) + done, len - done,
                             off_t(offset + done));
        if (r < 0) {
            if (errno == EINTR) continue;
            throw_errno(path, "write failed at byte offset " + std::to_string(offset + done));
        }
        if (r == 0) {
            errno = EIO;
            throw_errno(path, "write made no progress at byte offset " +
                                  std::to_string(offset + done));
        }
        done += size_t(r);
    }
}

}  // namespace featstore

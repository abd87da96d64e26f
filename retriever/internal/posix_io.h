// POSIX file I/O for the datastore (writer, reader and added-keys log):
// owned descriptors, whole pread/pwrite loops and errno mapped to absl::Status.
// Thread-compatible; an Fd is owned by one object.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rag::retriever::internal {

// `what` + ": " + strerror(err), with a code for the errno: NotFound for
// ENOENT, PermissionDenied for EACCES/EPERM, ResourceExhausted for a full
// disk or quota, Internal otherwise.
absl::Status ErrnoStatus(const std::string& what, int err);

// An owned file descriptor; closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd();
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept;
  int get() const { return fd_; }

 private:
  int fd_ = -1;
};

// open(2) with O_CLOEXEC and mode 0644.
absl::StatusOr<Fd> OpenFile(const std::string& path, int flags);
// Writes all `size` bytes at `offset`.
absl::Status PwriteAll(int fd, const void* data, size_t size, int64_t offset, const std::string& path);
// Reads exactly `size` bytes at `offset`; DataLoss if the file ends first.
absl::Status PreadAll(int fd, void* data, size_t size, int64_t offset, const std::string& path);
absl::Status FsyncFd(int fd, const std::string& path);
// Size of a regular file; InvalidArgument for anything else.
absl::StatusOr<int64_t> FileSize(int fd, const std::string& path);
// `dir`/`name`.
std::string PathIn(const std::string& dir, const char* name);

}  // namespace rag::retriever::internal

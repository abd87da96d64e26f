#include "common/file_util.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

namespace rag {
namespace {

absl::Status ErrnoStatus(const std::string& what, const std::string& path) {
  int err = errno;
  std::string msg = what + " '" + path + "': " + std::strerror(err);
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  return absl::InternalError(msg);
}

absl::Status FsyncPath(const std::string& path, bool directory);

}  // namespace

absl::Status AppendFileDurable(const std::string& path, const void* data, size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("opening for append", path);
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      absl::Status s = ErrnoStatus("appending to", path);
      ::close(fd);
      return s;
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    absl::Status s = ErrnoStatus("fsync", path);
    ::close(fd);
    return s;
  }
  if (::close(fd) != 0) return ErrnoStatus("closing", path);
  return absl::OkStatus();
}

namespace {

absl::Status FsyncPath(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) return ErrnoStatus("opening for fsync", path);
  int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoStatus("fsync", path);
  return absl::OkStatus();
}

std::string ToHex(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoStatus("opening", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return ErrnoStatus("reading", path);
  return ss.str();
}

absl::Status DurableRename(const std::string& from, const std::string& to) {
  if (std::filesystem::is_regular_file(from)) {
    if (absl::Status s = FsyncPath(from, false); !s.ok()) return s;
  }
  if (std::rename(from.c_str(), to.c_str()) != 0) return ErrnoStatus("renaming to '" + to + "'", from);
  std::filesystem::path parent = std::filesystem::path(to).parent_path();
  return FsyncPath(parent.empty() ? "." : parent.string(), true);
}

absl::Status WriteFileAtomic(const std::string& path, const std::string& contents) {
  return WriteFileAtomicParts(path, {contents});
}

absl::Status WriteFileAtomicParts(const std::string& path, const std::vector<std::string_view>& parts) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return ErrnoStatus("creating", tmp);
    for (std::string_view part : parts) out.write(part.data(), static_cast<std::streamsize>(part.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      return ErrnoStatus("writing", tmp);
    }
  }
  absl::Status s = DurableRename(tmp, path);
  if (!s.ok()) std::remove(tmp.c_str());
  return s;
}

std::string HashHex(const std::string& data) { return ToHex(XXH3_64bits(data.data(), data.size())); }

absl::StatusOr<std::string> HashFileHex(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoStatus("opening", path);
  XXH3_state_t* state = XXH3_createState();
  XXH3_64bits_reset(state);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) XXH3_64bits_update(state, buf.data(), static_cast<size_t>(in.gcount()));
  }
  uint64_t h = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  return ToHex(h);
}

}  // namespace rag

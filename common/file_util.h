// Small file helpers: whole-file reads and crash-safe writes (write to a
// temporary file in the same directory, fsync, rename). Thread-compatible.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rag {

// Reads the whole file at `path`. NotFound if it does not exist.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Writes `contents` to `path` atomically: readers see the old file or the
// new one, never a half-written one, even if the process is killed.
absl::Status WriteFileAtomic(const std::string& path, const std::string& contents);
// The same for a file made of `parts`, written one after the other, so a
// large file need not be put together in memory first.
absl::Status WriteFileAtomicParts(const std::string& path, const std::vector<std::string_view>& parts);

// Renames `from` to `to` after fsyncing `from`, then fsyncs the directory.
// Appends `size` bytes to an existing file and fsyncs it. NotFound when the
// file does not exist.
absl::Status AppendFileDurable(const std::string& path, const void* data, size_t size);

absl::Status DurableRename(const std::string& from, const std::string& to);

// 64-bit XXH3 of `data`, as 16 lowercase hex digits.
std::string HashHex(const std::string& data);

// Streams the file through XXH3-64; returns 16 hex digits.
absl::StatusOr<std::string> HashFileHex(const std::string& path);

}  // namespace rag

// Tests for common/binary_file: little-endian coding whatever the host,
// magics, and checksums streamed in pieces equal to the one-shot one.
#include "common/binary_file.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/status_matchers.h"

namespace rag {
namespace {

TEST(BinaryFileTest, LittleEndianFields) {
  unsigned char b[8];
  PutU32(b, 0x04030201u);
  EXPECT_EQ(b[0], 1);
  EXPECT_EQ(b[3], 4);
  EXPECT_EQ(GetU32(b), 0x04030201u);
  PutI64(b, -2);
  EXPECT_EQ(b[0], 0xfe);
  EXPECT_EQ(b[7], 0xff);
  EXPECT_EQ(GetI64(b), -2);
  std::string s;
  AppendU32(&s, 7);
  AppendU64(&s, 0x0102030405060708ull);
  ASSERT_EQ(s.size(), 12u);
  EXPECT_EQ(GetU32(s.data()), 7u);
  EXPECT_EQ(GetU64(s.data() + 4), 0x0102030405060708ull);
  EXPECT_EQ(s[4], 8);
}

TEST(BinaryFileTest, Magic) {
  constexpr Magic kMagic = {'R', 'A', 'G', 'T', 'E', 'S', 'T', '1'};
  std::string s;
  AppendMagic(&s, kMagic);
  EXPECT_EQ(s, "RAGTEST1");
  EXPECT_TRUE(HasMagic(s.data(), s.size(), kMagic));
  EXPECT_FALSE(HasMagic(s.data(), 7, kMagic));
  s[7] = '2';
  EXPECT_FALSE(HasMagic(s.data(), s.size(), kMagic));
}

TEST(BinaryFileTest, StreamingChecksumEqualsOneShot) {
  const std::string data = "the quick brown fox jumps over the lazy dog";
  auto sum = StreamingChecksum::Create();
  RAG_ASSERT_OK(sum.status());
  sum->Update(data.data(), 10);
  sum->Update(data.data() + 10, data.size() - 10);
  EXPECT_EQ(sum->Digest(), Checksum64(data));
  EXPECT_NE(Checksum64(data), Checksum64(data.data(), data.size() - 1));
}

}  // namespace
}  // namespace rag

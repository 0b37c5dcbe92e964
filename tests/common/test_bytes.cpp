// Byte sizes: the one parser the config (optimizer_device_budget) and the CLI (--max-shard-size)
// share.
#include <gtest/gtest.h>

#include "trainer/common/bytes.h"

using namespace qlora;

TEST(ByteSize, Parses) {
  EXPECT_EQ(parse_byte_size("512MB").value(), 512000000u);
  EXPECT_EQ(parse_byte_size("512m").value(), 512000000u);
  EXPECT_EQ(parse_byte_size("1.5 GiB").value(), 1610612736u);
  EXPECT_EQ(parse_byte_size("2gib").value(), uint64_t{2} << 30);
  EXPECT_EQ(parse_byte_size("5GB").value(), 5000000000u);
  EXPECT_EQ(parse_byte_size("40kb").value(), 40000u);
  EXPECT_EQ(parse_byte_size("1.5GB").value(), 1500000000u);
  EXPECT_EQ(parse_byte_size("4096").value(), 4096u);
  EXPECT_EQ(parse_byte_size("7B").value(), 7u);
  EXPECT_EQ(parse_byte_size("0").value(), 0u);
  for (const char* bad : {"", "abc", "auto", "12 parsecs", "1.2.3GB", "1..2GB", "-5MB", "MB", "5XB", "."})
    EXPECT_FALSE(parse_byte_size(bad)) << bad;
}

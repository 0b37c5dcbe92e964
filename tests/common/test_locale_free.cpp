// common/ascii.h and common/numbers.h answer what <cctype>, strtod and strtoll answer in the "C"
// locale, byte for byte and bit for bit; the C library itself is the judge (the test process
// never calls setlocale, so it is in the "C" locale).
#include <gtest/gtest.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "trainer/common/ascii.h"
#include "trainer/common/bytes.h"
#include "trainer/common/numbers.h"

using namespace qlora;

TEST(Ascii, MatchesCctypeInTheCLocale) {
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    SCOPED_TRACE(b);
    EXPECT_EQ(ascii_is_digit(c), std::isdigit(b) != 0);
    EXPECT_EQ(ascii_is_xdigit(c), std::isxdigit(b) != 0);
    EXPECT_EQ(ascii_is_alpha(c), std::isalpha(b) != 0);
    EXPECT_EQ(ascii_is_alnum(c), std::isalnum(b) != 0);
    EXPECT_EQ(ascii_is_upper(c), std::isupper(b) != 0);
    EXPECT_EQ(ascii_is_lower(c), std::islower(b) != 0);
    EXPECT_EQ(ascii_is_space(c), std::isspace(b) != 0);
    EXPECT_EQ(static_cast<unsigned char>(ascii_to_lower(c)), std::tolower(b));
    EXPECT_EQ(static_cast<unsigned char>(ascii_to_upper(c)), std::toupper(b));
  }
  static_assert(ascii_to_upper('q') == 'Q' && !ascii_is_alpha('\xC3'));
}

namespace {

const char* const kNumberTexts[] = {
    "0",
    "-0",
    "+0",
    "1",
    "12",
    " 12",
    "\t\n\v\f\r 12",
    "12 ",
    "+12",
    "-12",
    "+-12",
    "-+12",
    "--1",
    "++1",
    "",
    " ",
    "+",
    "-",
    ".",
    "+.",
    "1.",
    ".5",
    "-.5",
    "1.5",
    "1.5.",
    "1..5",
    "1e3",
    "1E3",
    "1e+3",
    "1e-3",
    "1e",
    "1e+",
    "1e-",
    "e3",
    ".e3",
    "1.5e3x",
    "12abc",
    "1_000",
    "0x1A",
    "0X1a",
    "-0x10",
    "+0x10",
    "0x",
    "0x.",
    "0x.8",
    "0x1.8p1",
    "0x1p-2",
    "0x1P+2",
    "0x1p",
    "0xg",
    "0x-1",
    "0x+1",
    "0xinf",
    "0xnan",
    "00x1",
    "inf",
    "-inf",
    "+inf",
    "INF",
    "Infinity",
    "-INFINITY",
    "infin",
    "infx",
    "nan",
    "-nan",
    "NaN",
    "nan()",
    "nan(123)",
    "nan(abc_1)",
    "nan(",
    "nan(1",
    "nanx",
    "1e308",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "1e309",
    "-1e309",
    "1e400",
    "1e99999999999999999999",
    "1e-307",
    "1e-320",
    "4.9e-324",
    "3e-324",
    "2.4e-324",
    "2.5e-324",
    "1e-400",
    "-1e-400",
    "1e-99999999999999999999",
    "0.00000000000000000000000000000000000000001e-300",
    "123456789012345678901234567890e-330",
    "999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999"
    "999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999"
    "999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999"
    "99999999999999999999",
    "0x1p1024",
    "0x1p-1075",
    "0x1p-1074",
    "-0x1p99999999999999999999",
    "0x0.0000001p-1070",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "99999999999999999999",
    "0.1",
    "0.30000000000000004",
    "2.5",
    "1,5",
    "1 000",
    "\xC2\xA0"
    "1",
    "１２",
    "0012",
    "-00",
    "7e0"};

}  // namespace

TEST(Numbers, ParseCDoubleMatchesStrtod) {
  for (const char* t : kNumberTexts) {
    SCOPED_TRACE(t);
    char* end = nullptr;
    const double want = std::strtod(t, &end);
    const bool whole = end != t && *end == '\0';
    const std::optional<double> got = parse_c_double(t);
    ASSERT_EQ(got.has_value(), whole);
    if (!whole) continue;
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(*got));
      EXPECT_EQ(std::signbit(*got), std::signbit(want));
    } else {
      EXPECT_EQ(std::memcmp(&want, &*got, sizeof want), 0) << want << " vs " << *got;
    }
  }
}

TEST(Numbers, ParseCIntMatchesStrtoll) {
  for (const char* t : kNumberTexts) {
    SCOPED_TRACE(t);
    char* end = nullptr;
    errno = 0;
    const long long want = std::strtoll(t, &end, 10);
    const bool read = end != t && errno == 0;
    size_t used = 0;
    const std::optional<int64_t> prefix = parse_c_int(t, &used);
    ASSERT_EQ(prefix.has_value(), read);
    if (read) {
      EXPECT_EQ(*prefix, want);
      EXPECT_EQ(used, static_cast<size_t>(end - t));
    }
    const std::optional<int64_t> whole = parse_c_int(t);
    ASSERT_EQ(whole.has_value(), read && *end == '\0');
    if (whole) { EXPECT_EQ(*whole, want); }
  }
}

TEST(Numbers, ByteSizesStillParse) {
  EXPECT_EQ(parse_byte_size("1.5GB"), 1500000000u);
  EXPECT_EQ(parse_byte_size(" 2 GiB "), 2147483648u);
  EXPECT_EQ(parse_byte_size("512m"), 512000000u);
  EXPECT_EQ(parse_byte_size("1."), 1u);
  EXPECT_EQ(parse_byte_size(".5kb"), 500u);
  EXPECT_EQ(parse_byte_size("1,5GB"), std::nullopt);
  // More digits than a double holds is "more than 9e18 bytes", not an exception.
  EXPECT_EQ(parse_byte_size(std::string(400, '9')), std::nullopt);
}

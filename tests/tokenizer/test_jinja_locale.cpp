// The template engine's output does not depend on the C library's locale: numbers are read and
// written without LC_NUMERIC, strftime_now's names are English whatever LC_TIME says. The
// formatter is judged by glibc's strftime in the "C" locale (the test process starts in it) and
// by fixed Python-checked texts; then each installed locale among a few is set with setlocale
// and everything must come out the same.
#include <gtest/gtest.h>

#include <chrono>
#include <clocale>
#include <cstdlib>
#include <ctime>

#include "trainer/common/bytes.h"
#include "trainer/common/numbers.h"
#include "trainer/jinja/builtins.h"
#include "trainer/jinja/template.h"

using namespace qlora;

namespace {

std::tm make_tm(int y, int mon, int d, int h, int mi, int s) {
  std::tm t{};
  t.tm_year = y - 1900;
  t.tm_mon = mon - 1;
  t.tm_mday = d;
  t.tm_hour = h;
  t.tm_min = mi;
  t.tm_sec = s;
  const std::time_t secs = timegm(&t);  // fills tm_wday and tm_yday
  gmtime_r(&secs, &t);
  return t;
}

std::string c_strftime(const std::string& fmt, const std::tm& tm) {
  char buf[1024];
  const size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
  return std::string(buf, n);
}

std::vector<std::tm> sample_times() {
  return {make_tm(2024, 3, 5, 0, 7, 9),    make_tm(2021, 1, 1, 12, 0, 0),    make_tm(2024, 12, 30, 23, 59, 59),
          make_tm(1999, 12, 31, 11, 5, 0), make_tm(2000, 2, 29, 13, 45, 30), make_tm(2023, 1, 1, 9, 9, 9),
          make_tm(2026, 7, 4, 18, 30, 0),  make_tm(1970, 1, 1, 0, 0, 0),     make_tm(2020, 12, 31, 6, 1, 2)};
}

std::vector<std::string> sample_formats() {
  std::vector<std::string> f = {"%d %b %Y",
                                "%Y-%m-%d %H:%M:%S",
                                "%A, %B %e, %Y",
                                "%I:%M %p",
                                "%%d",
                                "100%",
                                "%",
                                "abc%",
                                "%-",
                                "%E",
                                "%O",
                                "%Q",
                                "%-Q",
                                "%EQ",
                                "%Ed",
                                "%Oy",
                                "%Ey",
                                "%Ec",
                                "%OH",
                                "%Ox",
                                "%5d",
                                "%-5d",
                                "%_5d",
                                "%10B",
                                "%010Y",
                                "%3j",
                                "%^a %^B",
                                "%#a %#p",
                                "%^p %^P",
                                "%_H %-H %0e",
                                "%-j %_j",
                                "%G-W%V-%u",
                                "%g",
                                "%C %y",
                                "%n%t",
                                "%s"};
  for (char c : std::string("aAbBcCdDeFgGhHIjklmMnpPrRStTuUVwWxXyY%"))
    for (std::string flag : {"", "-", "_", "0", "^", "#"}) f.push_back("%" + flag + c);
  return f;
}

}  // namespace

TEST(JinjaStrftime, MatchesGlibcInTheCLocale) {
  ASSERT_NE(std::setlocale(LC_ALL, "C"), nullptr);
  for (const std::tm& tm : sample_times())
    for (const std::string& fmt : sample_formats())
      EXPECT_EQ(jinja::format_datetime(fmt, tm, 0), c_strftime(fmt, tm)) << fmt;
}

TEST(JinjaStrftime, PythonOnlyConversions) {
  // datetime(2024, 3, 5, 0, 7, 9, 123456).strftime(...) in Python 3.11
  const std::tm tm = make_tm(2024, 3, 5, 0, 7, 9);
  EXPECT_EQ(jinja::format_datetime("%f", tm, 123456), "123456");
  EXPECT_EQ(jinja::format_datetime("%f", tm, 42), "000042");
  EXPECT_EQ(jinja::format_datetime("[%z][%Z]", tm, 0), "[][]");
  EXPECT_EQ(jinja::format_datetime("%%f %-d %c", tm, 0), "%f 5 Tue Mar  5 00:07:09 2024");
  EXPECT_EQ(jinja::format_datetime("%d %b %Y", tm, 0), "05 Mar 2024");  // Llama 3.1's date_string
}

TEST(JinjaLocale, OutputDoesNotDependOnSetlocale) {
  ASSERT_NE(std::setlocale(LC_ALL, "C"), nullptr);
  const std::string src =
      "{{ 1.5 }} {{ 2.5e3 }} {{ 1_000.25 }} {{ '2.5'|float }} {{ ' 12 '|int }} {{ '1e3'|float }} {{ '-3.7'|int }} "
      "{{ '+4'|int }} {{ '1,5'|float }} {{ 'inf'|float }} {{ 0.1 + 0.2 }} {{ 1e-5 }} {{ 7 / 2 }} "
      "{{ [1.25, 1e100]|tojson }} {{ 3.5|string }}";
  const std::string want =
      "1.5 2500.0 1000.25 2.5 12 1000.0 -3 4 0.0 inf 0.30000000000000004 1e-05 3.5 "
      "[1.25, 1e+100] 3.5";
  const std::string time_src = "{{ strftime_now('%a %A %b %B %p %d') }}";
  const std::string time_fmt = "%a %A %b %B %p %d";
  const jinja::Template parsed_in_c(src, "locale test");
  ASSERT_EQ(parsed_in_c.render_text({}), want);
  const std::tm tm = make_tm(2024, 10, 3, 15, 4, 5);
  const std::string want_time = jinja::format_datetime(time_fmt, tm, 0);
  ASSERT_EQ(want_time, "Thu Thursday Oct October PM 03");

  int tried = 0;
  for (const char* name : {"de_DE.UTF-8", "fr_FR.UTF-8", "tr_TR.UTF-8", "C.UTF-8"}) {
    if (!std::setlocale(LC_ALL, name)) continue;
    SCOPED_TRACE(name);
    ++tried;
    const bool comma = *std::localeconv()->decimal_point == ',';
    if (comma) {
      EXPECT_EQ(std::strtod("1,5", nullptr), 1.5);  // the locale is in effect for the C library
    }
    EXPECT_EQ(parsed_in_c.render_text({}), want);
    EXPECT_EQ(jinja::Template(src, "locale test").render_text({}), want);  // lexed in this locale
    EXPECT_EQ(jinja::format_datetime(time_fmt, tm, 0), want_time);
    for (int attempt = 0; attempt < 2; ++attempt) {  // strftime_now against the same second's text
      const std::time_t now = std::time(nullptr);
      std::tm local{};
      localtime_r(&now, &local);
      const std::string rendered = jinja::Template(time_src).render_text({});
      if (rendered == jinja::format_datetime(time_fmt, local, 0) || attempt == 1) {
        char c_names[128];
        std::setlocale(LC_TIME, "C");
        std::strftime(c_names, sizeof c_names, time_fmt.c_str(), &local);
        std::setlocale(LC_ALL, name);
        EXPECT_EQ(rendered, c_names);
        break;
      }
    }
    EXPECT_EQ(parse_c_double("1.5"), 1.5);
    EXPECT_EQ(parse_c_double("1,5"), std::nullopt);
    EXPECT_EQ(parse_byte_size("1.5GB"), 1500000000u);
  }
  std::setlocale(LC_ALL, "C");
  std::printf("locales tried besides \"C\": %d (de_DE.UTF-8, fr_FR.UTF-8, tr_TR.UTF-8, C.UTF-8 where installed)\n",
              tried);
}

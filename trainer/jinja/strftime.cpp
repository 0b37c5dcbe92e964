// strftime_now's formatter: Python's datetime.strftime on a naive local time, which hands the
// format to the C library's strftime, in the "C" locale whatever locale the process is in.
#include <cstdio>
#include <ctime>
#include <string>

#include "trainer/common/ascii.h"
#include "trainer/jinja/builtins.h"

namespace qlora::jinja {

namespace {

const char* const kDays[] = {"Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"};
const char* const kMonths[] = {"January", "February", "March",     "April",   "May",      "June",
                               "July",    "August",   "September", "October", "November", "December"};

bool is_leap(long long y) { return y % 4 == 0 && (y % 100 != 0 || y % 400 == 0); }

// Days since the Monday of ISO week 1 (glibc's iso_week_days).
int iso_week_days(int yday, int wday) { return yday - (yday - wday + 4 + 378) % 7 + 3; }

}  // namespace

std::string format_datetime(const std::string& fmt, const std::tm& tm, int microsecond) {
  std::string out;
  const long long year = tm.tm_year + 1900LL;
  size_t i = 0;
  while (i < fmt.size()) {
    if (fmt[i] != '%') {
      out += fmt[i++];
      continue;
    }
    const size_t start = i++;
    char pad = 0;        // '-', '_' or '0' when given
    bool upper = false;  // '^'
    bool swap = false;   // '#'
    for (; i < fmt.size(); ++i) {
      const char f = fmt[i];
      if (f == '-' || f == '_' || f == '0')
        pad = f;
      else if (f == '^')
        upper = true;
      else if (f == '#')
        swap = true;
      else
        break;
    }
    size_t width = 0;
    bool has_width = false;
    for (; i < fmt.size() && ascii_is_digit(fmt[i]); ++i) {
      width = std::min<size_t>(width * 10 + static_cast<size_t>(fmt[i] - '0'), 1024);
      has_width = true;
    }
    char modifier = 0;  // 'E' or 'O': the alternative forms, the same in the "C" locale
    if (i < fmt.size() && (fmt[i] == 'E' || fmt[i] == 'O')) modifier = fmt[i++];
    if (i >= fmt.size()) {  // a '%' sequence cut off by the end stays as written
      out += fmt.substr(start);
      break;
    }
    const char conv = fmt[i++];
    if ((modifier == 'E' && std::string_view("cCxXyY").find(conv) == std::string_view::npos) ||
        (modifier == 'O' && std::string_view("deHImMSUuVwWy").find(conv) == std::string_view::npos)) {
      out += fmt.substr(start, i - start);
      continue;
    }
    // A number: zero-padded (space-padded for %e %k %l) to `digits` or the given width.
    auto num = [&](long long v, size_t digits, char default_pad) {
      std::string s = std::to_string(v < 0 ? -v : v);
      const char p = pad == '_' ? ' ' : pad == '0' ? '0' : default_pad;
      const size_t w = has_width ? width : pad == '-' ? 0 : digits;  // '-' and a width: spaces
      if (s.size() + (v < 0) < w) s.insert(0, w - s.size() - (v < 0), pad == '-' ? ' ' : p);
      return (v < 0 ? "-" : "") + s;
    };
    // A text: names, and the compound forms (%c, %D, ...) formatted from their parts. '^' makes
    // it upper case; '#' swaps the case of names: upper for days and months, lower for AM/PM.
    auto text = [&](std::string s, char swapped = 0) {
      if (upper || (swap && swapped == 'U'))
        for (char& c : s) c = ascii_to_upper(c);
      else if (swap && swapped == 'L')
        for (char& c : s) c = ascii_to_lower(c);
      if (has_width && s.size() < width) s.insert(0, width - s.size(), pad == '0' ? '0' : ' ');
      return s;
    };
    auto sub = [&](const char* f) { return text(format_datetime(f, tm, microsecond)); };
    const int hour12 = tm.tm_hour % 12 == 0 ? 12 : tm.tm_hour % 12;
    // ISO 8601 week-based year and week number
    long long iso_year = year;
    int iso_days = iso_week_days(tm.tm_yday, tm.tm_wday);
    if (iso_days < 0) {
      --iso_year;
      iso_days = iso_week_days(tm.tm_yday + (365 + is_leap(iso_year)), tm.tm_wday);
    } else if (int d = iso_week_days(tm.tm_yday - (365 + is_leap(year)), tm.tm_wday); d >= 0) {
      ++iso_year;
      iso_days = d;
    }
    switch (conv) {
      case '%': out += text("%"); break;
      case 'a': out += text(std::string(kDays[tm.tm_wday % 7], 3), 'U'); break;
      case 'A': out += text(kDays[tm.tm_wday % 7], 'U'); break;
      case 'b':
      case 'h': out += text(std::string(kMonths[tm.tm_mon % 12], 3), 'U'); break;
      case 'B': out += text(kMonths[tm.tm_mon % 12], 'U'); break;
      case 'c': out += sub("%a %b %e %H:%M:%S %Y"); break;
      case 'C': out += num(year >= 0 ? year / 100 : -((99 - year) / 100), 2, '0'); break;
      case 'd': out += num(tm.tm_mday, 2, '0'); break;
      case 'D':
      case 'x': out += sub("%m/%d/%y"); break;
      case 'e': out += num(tm.tm_mday, 2, ' '); break;
      case 'F': out += sub("%Y-%m-%d"); break;
      case 'f': out += std::to_string(1000000 + microsecond).substr(1); break;  // Python's own
      case 'g': out += num((iso_year % 100 + 100) % 100, 2, '0'); break;
      case 'G': out += num(iso_year, 1, '0'); break;
      case 'H': out += num(tm.tm_hour, 2, '0'); break;
      case 'I': out += num(hour12, 2, '0'); break;
      case 'j': out += num(tm.tm_yday + 1, 3, '0'); break;
      case 'k': out += num(tm.tm_hour, 2, ' '); break;
      case 'l': out += num(hour12, 2, ' '); break;
      case 'm': out += num(tm.tm_mon + 1, 2, '0'); break;
      case 'M': out += num(tm.tm_min, 2, '0'); break;
      case 'n': out += text("\n"); break;
      case 'p': out += text(tm.tm_hour < 12 ? "AM" : "PM", 'L'); break;
      case 'P':  // glibc takes no case flag here
        upper = false;
        out += text(tm.tm_hour < 12 ? "am" : "pm");
        break;
      case 'r': out += sub("%I:%M:%S %p"); break;
      case 'R': out += sub("%H:%M"); break;
      case 's': {
        std::tm copy = tm;
        out += num(static_cast<long long>(std::mktime(&copy)), 1, '0');
        break;
      }
      case 'S': out += num(tm.tm_sec, 2, '0'); break;
      case 't': out += text("\t"); break;
      case 'T':
      case 'X': out += sub("%H:%M:%S"); break;
      case 'u': out += num(tm.tm_wday == 0 ? 7 : tm.tm_wday, 1, '0'); break;
      case 'U': out += num((tm.tm_yday - tm.tm_wday + 7) / 7, 2, '0'); break;
      case 'V': out += num(iso_days / 7 + 1, 2, '0'); break;
      case 'w': out += num(tm.tm_wday, 1, '0'); break;
      case 'W': out += num((tm.tm_yday - (tm.tm_wday + 6) % 7 + 7) / 7, 2, '0'); break;
      case 'y': out += num((year % 100 + 100) % 100, 2, '0'); break;
      case 'Y': out += num(year, 1, '0'); break;
      case 'z':
      case 'Z': break;  // a naive datetime has no UTC offset and no zone name: Python writes ""
      default: out += fmt.substr(start, i - start);  // unknown: as written, like glibc
    }
  }
  return out;
}

}  // namespace qlora::jinja

// The one user-facing error type.
//
// UserError is a mistake in what the user gave us (a config key, a data line, a file, an
// argument). Its message is one line naming the file and the key or line and what was expected,
// e.g. "configs/x.yaml: lora_r: expected a positive integer, got -3". The CLI prints it and exits
// with code 2. Anything else that escapes is an internal failure (exit 1).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace qlora {

class UserError : public std::runtime_error {
 public:
  explicit UserError(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// A value from the user's input as it is echoed in a message: at most `max` bytes, else its
// start (cut at a UTF-8 character boundary) followed by "..." and its length, so a message stays
// one readable line whatever was given.
inline std::string shorten(std::string_view s, size_t max = 80) {
  if (s.size() <= max) return std::string(s);
  size_t cut = max > 3 ? max - 3 : 0;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return std::string(s.substr(0, cut)) + "... (" + std::to_string(s.size()) + " bytes)";
}

// The message of a JSON library exception without its "[json.exception.parse_error.101] " id:
// what a user is shown of a file that is not valid JSON.
inline std::string json_error_text(const std::exception& e) {
  std::string m = e.what();
  if (m.starts_with("[json.exception.")) {
    const size_t p = m.find("] ");
    if (p != std::string::npos) m.erase(0, p + 2);
  }
  return m;
}

// The first line of a message: c10 errors append a C++ stack trace, some libraries more detail.
inline std::string first_line(std::string_view s) { return std::string(s.substr(0, s.find('\n'))); }

// Throws UserError with the arguments streamed together.
template <class... Args>
[[noreturn]] void user_error(Args&&... args) {
  throw UserError(detail::concat(std::forward<Args>(args)...));
}

}  // namespace qlora

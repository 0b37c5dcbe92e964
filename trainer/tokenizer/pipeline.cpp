// The stages of the huggingface/tokenizers pipeline (normalizers, pre_tokenizers, processors,
// decoders, added_vocabulary.rs), written from their documented behaviour and checked against
// the library itself by tests/tokenizer.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "trainer/tokenizer/pipeline.h"

#include <pcre2.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "trainer/common/error.h"
#include "trainer/tokenizer/byte_level.h"
#include "trainer/unicode/case_map.h"
#include "trainer/unicode/char_class.h"
#include "trainer/unicode/normalize.h"
#include "trainer/unicode/utf8.h"

namespace qlora::tok {

using unicode::is_numeric;
using unicode::is_whitespace;
using unicode::is_word_char;
using unicode::utf8_lossy;
using unicode::utf8_next;
using unicode::utf8_valid;

// ---- Regex (PCRE2) ------------------------------------------------------------------------------

Regex::Regex(const std::string& pattern) {
  int err = 0;
  PCRE2_SIZE off = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err,
                             &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    user_error("regex /", pattern, "/ at offset ", off, ": ", reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

namespace {
// Per-thread match data and JIT stack, large enough for any pattern we run.
struct MatchScratch {
  pcre2_match_data* md = pcre2_match_data_create(4, nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
  pcre2_match_context* ctx = pcre2_match_context_create(nullptr);
  MatchScratch() { pcre2_jit_stack_assign(ctx, nullptr, stack); }
  ~MatchScratch() {
    pcre2_match_context_free(ctx);
    pcre2_jit_stack_free(stack);
    pcre2_match_data_free(md);
  }
};
}  // namespace

void Regex::find_all(std::string_view s, std::vector<std::pair<uint32_t, uint32_t>>& out) const {
  thread_local MatchScratch scratch;
  auto* code = static_cast<pcre2_code*>(code_);
  PCRE2_SIZE pos = 0;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  while (pos <= s.size()) {
    int rc = pcre2_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, scratch.md, scratch.ctx);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw std::runtime_error(std::string("pcre2_match: ") + reinterpret_cast<const char*>(msg));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(scratch.md);
    PCRE2_SIZE b = ov[0], e = ov[1];
    if (e > b) {
      out.emplace_back(uint32_t(b), uint32_t(e));
      pos = e;
    } else {  // empty match: step over one character
      if (b >= s.size()) break;
      pos = b + unicode::utf8_seq_len(static_cast<unsigned char>(s[b]));
    }
  }
}

// ---- normalizers ------------------------------------------------------------------------------

namespace {

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(unicode::NormalForm f) : form_(f) {}
  void normalize(std::string& s) const override { unicode::normalize(s, form_); }

 private:
  unicode::NormalForm form_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> p) : parts_(std::move(p)) {}
  void normalize(std::string& s) const override {
    for (const auto& p : parts_) p->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string p) : prepend_(std::move(p)) {}
  void normalize(std::string& s) const override {
    if (!s.empty()) s.insert(0, prepend_);
  }

 private:
  std::string prepend_;
};

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  if (from.empty() || s.find(from) == std::string::npos) return;
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos, std::string::npos);
  s.swap(out);
}

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::string pattern, bool is_regex, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {
    if (is_regex) re_ = std::make_unique<Regex>(pattern_);
  }
  void normalize(std::string& s) const override {
    if (!re_) return replace_all(s, pattern_, content_);
    thread_local std::vector<std::pair<uint32_t, uint32_t>> m;
    m.clear();
    re_->find_all(s, m);
    if (m.empty()) return;
    std::string out;
    size_t pos = 0;
    for (auto [b, e] : m) {
      out.append(s, pos, b - pos);
      out += content_;
      pos = e;
    }
    out.append(s, pos, std::string::npos);
    s.swap(out);
  }

 private:
  std::string pattern_, content_;
  std::unique_ptr<Regex> re_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string& s) const override { s = unicode::to_lower(s); }
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool l, bool r) : left_(l), right_(r) {}
  void normalize(std::string& s) const override {
    size_t b = 0, e = s.size();
    if (left_) {
      while (b < e) {
        size_t i = b;
        if (!is_whitespace(utf8_next(s, i))) break;
        b = i;
      }
    }
    if (right_) {
      while (e > b) {
        size_t start = e - 1;
        while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
        size_t i = start;
        if (!is_whitespace(utf8_next(s, i))) break;
        e = start;
      }
    }
    s = s.substr(b, e - b);
  }

 private:
  bool left_, right_;
};

}  // namespace

std::unique_ptr<Normalizer> make_nfc_normalizer(unicode::NormalForm f) {
  return std::make_unique<UnicodeNormalizer>(f);
}
std::unique_ptr<Normalizer> make_sequence_normalizer(std::vector<std::unique_ptr<Normalizer>> p) {
  return std::make_unique<SequenceNormalizer>(std::move(p));
}
std::unique_ptr<Normalizer> make_prepend_normalizer(std::string p) {
  return std::make_unique<PrependNormalizer>(std::move(p));
}
std::unique_ptr<Normalizer> make_replace_normalizer(std::string pattern, bool is_regex, std::string content) {
  return std::make_unique<ReplaceNormalizer>(std::move(pattern), is_regex, std::move(content));
}
std::unique_ptr<Normalizer> make_lowercase_normalizer() { return std::make_unique<LowercaseNormalizer>(); }
std::unique_ptr<Normalizer> make_strip_normalizer(bool l, bool r) { return std::make_unique<StripNormalizer>(l, r); }

// ---- pre-tokenizers ---------------------------------------------------------------------------

namespace {

// A split of one span: [begin, end) relative to the span, and whether the pattern matched it.
struct Range {
  uint32_t begin, end;
  bool match;
};

// Applies a SplitDelimiterBehavior to ranges that cover a span (tokenizers normalizer.rs split).
void apply_behavior(std::vector<Range>& r, SplitBehavior b) {
  std::vector<Range> out;
  out.reserve(r.size());
  switch (b) {
    case SplitBehavior::Isolated: return;
    case SplitBehavior::Removed:
      for (const auto& x : r)
        if (!x.match) out.push_back(x);
      break;
    case SplitBehavior::MergedWithPrevious: {
      bool prev_match = false;
      for (const auto& x : r) {
        if (x.match && !prev_match && !out.empty())
          out.back().end = x.end;
        else
          out.push_back(x);
        prev_match = x.match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool prev_match = false;
      for (auto it = r.rbegin(); it != r.rend(); ++it) {
        if (it->match && !prev_match && !out.empty())
          out.back().begin = it->begin;
        else
          out.push_back(*it);
        prev_match = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
    case SplitBehavior::Contiguous: {
      bool prev_match = false;
      for (const auto& x : r) {
        if (x.match == prev_match && !out.empty())
          out.back().end = x.end;
        else
          out.push_back(x);
        prev_match = x.match;
      }
      break;
    }
  }
  r.swap(out);
}

// Matches (absolute offsets within the piece) -> ranges covering [0, n).
void cover(const std::vector<std::pair<uint32_t, uint32_t>>& m, uint32_t n, bool invert, std::vector<Range>& r) {
  r.clear();
  uint32_t pos = 0;
  for (auto [b, e] : m) {
    if (b > pos) r.push_back({pos, b, invert});
    r.push_back({b, e, !invert});
    pos = e;
  }
  if (pos < n) r.push_back({pos, n, invert});
}

// Re-splits every span of `pt` with `ranges_of(piece, ranges)`; the text stays as it is.
template <class F>
void split_spans(PreTokenized& pt, F&& ranges_of) {
  thread_local std::vector<Range> r;
  thread_local std::vector<PreTokenized::Span> out;  // swapped with pt.spans: buffers are reused
  out.clear();
  for (const auto& sp : pt.spans) {
    std::string_view piece(pt.text.data() + sp.begin, sp.end - sp.begin);
    ranges_of(piece, r);
    for (const auto& x : r)
      if (x.end > x.begin) out.push_back({sp.begin + x.begin, sp.begin + x.end, sp.first && x.begin == 0});
  }
  pt.spans.swap(out);
}

// The GPT-2 split pattern of ByteLevel(use_regex=true).
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPre final : public PreTokenizer {
 public:
  ByteLevelPre(bool add_prefix_space, bool use_regex) : add_prefix_space_(add_prefix_space) {
    if (use_regex) re_ = std::make_unique<Regex>(kGpt2Pattern);
  }
  bool map_bytes = true;  // false when the BPE model maps bytes itself (see PipelineTokenizer::finish)

  void pre_tokenize(PreTokenized& pt) const override {
    if (!add_prefix_space_ && !re_ && !map_bytes) return;
    const auto& alpha = byte_level_alphabet();
    thread_local std::string text;  // swapped with pt's buffers below, so they are reused
    thread_local std::vector<PreTokenized::Span> spans;
    text.clear();
    spans.clear();
    thread_local std::string piece;
    thread_local std::vector<std::pair<uint32_t, uint32_t>> m;
    for (const auto& sp : pt.spans) {
      piece.assign(pt.text, sp.begin, sp.end - sp.begin);
      if (add_prefix_space_ && (piece.empty() || piece[0] != ' ')) piece.insert(0, 1, ' ');
      m.clear();
      if (re_)
        re_->find_all(piece, m);
      else
        m.emplace_back(0, uint32_t(piece.size()));
      thread_local std::vector<Range> r;
      cover(m, uint32_t(piece.size()), false, r);
      for (const auto& x : r) {
        if (x.end == x.begin) continue;
        uint32_t b = uint32_t(text.size());
        if (map_bytes)
          for (uint32_t i = x.begin; i < x.end; ++i) text += alpha.byte_to_utf8[static_cast<unsigned char>(piece[i])];
        else
          text.append(piece, x.begin, x.end - x.begin);
        spans.push_back({b, uint32_t(text.size()), sp.first && x.begin == 0});
      }
    }
    pt.text.swap(text);
    pt.spans.swap(spans);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> re_;
};

class SplitPre final : public PreTokenizer {
 public:
  SplitPre(std::string pattern, bool is_regex, SplitBehavior b, bool invert)
      : literal_(std::move(pattern)), behavior_(b), invert_(invert) {
    if (is_regex) re_ = std::make_unique<Regex>(literal_);
  }
  void pre_tokenize(PreTokenized& pt) const override {
    split_spans(pt, [&](std::string_view piece, std::vector<Range>& r) {
      thread_local std::vector<std::pair<uint32_t, uint32_t>> m;
      m.clear();
      if (re_) {
        re_->find_all(piece, m);
      } else if (!literal_.empty()) {
        for (size_t pos = 0; (pos = piece.find(literal_, pos)) != std::string_view::npos; pos += literal_.size())
          m.emplace_back(uint32_t(pos), uint32_t(pos + literal_.size()));
      }
      cover(m, uint32_t(piece.size()), invert_, r);
      apply_behavior(r, behavior_);
    });
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> re_;
  SplitBehavior behavior_;
  bool invert_;
};

// Splits on single characters that satisfy `pred` (each matching character is one match).
template <class Pred>
void char_ranges(std::string_view piece, Pred pred, std::vector<Range>& r) {
  r.clear();
  uint32_t pos = 0;
  size_t i = 0;
  while (i < piece.size()) {
    size_t b = i;
    char32_t c = utf8_next(piece, i);
    if (pred(c)) {
      if (b > pos) r.push_back({pos, uint32_t(b), false});
      r.push_back({uint32_t(b), uint32_t(i), true});
      pos = uint32_t(i);
    }
  }
  if (pos < piece.size()) r.push_back({pos, uint32_t(piece.size()), false});
}

class MetaspacePre final : public PreTokenizer {
 public:
  MetaspacePre(std::string rep, PrependScheme s, bool split) : rep_(std::move(rep)), scheme_(s), split_(split) {}
  void pre_tokenize(PreTokenized& pt) const override {
    thread_local std::string text;  // swapped with pt's buffers below, so they are reused
    thread_local std::vector<PreTokenized::Span> spans;
    text.clear();
    spans.clear();
    for (const auto& sp : pt.spans) {
      uint32_t b = uint32_t(text.size());
      std::string_view piece(pt.text.data() + sp.begin, sp.end - sp.begin);
      bool starts_with_rep = piece.starts_with(" ") || piece.starts_with(rep_);
      bool prepend = scheme_ == PrependScheme::Always || (scheme_ == PrependScheme::First && sp.first);
      if (prepend && !starts_with_rep) text += rep_;
      for (char c : piece) {
        if (c == ' ')
          text += rep_;
        else
          text += c;
      }
      spans.push_back({b, uint32_t(text.size()), sp.first});
    }
    pt.text.swap(text);
    pt.spans.swap(spans);
    if (!split_) return;
    char32_t rc = 0;
    size_t i = 0;
    rc = utf8_next(rep_, i);
    split_spans(pt, [&](std::string_view piece, std::vector<Range>& r) {
      char_ranges(
          piece, [rc](char32_t c) { return c == rc; }, r);
      apply_behavior(r, SplitBehavior::MergedWithNext);
    });
  }

 private:
  std::string rep_;
  PrependScheme scheme_;
  bool split_;
};

class DigitsPre final : public PreTokenizer {
 public:
  explicit DigitsPre(bool individual) : individual_(individual) {}
  void pre_tokenize(PreTokenized& pt) const override {
    split_spans(pt, [&](std::string_view piece, std::vector<Range>& r) {
      char_ranges(piece, is_numeric, r);
      apply_behavior(r, individual_ ? SplitBehavior::Isolated : SplitBehavior::Contiguous);
    });
  }

 private:
  bool individual_;
};

class WhitespacePre final : public PreTokenizer {
 public:
  explicit WhitespacePre(bool split_only) : split_only_(split_only) {
    if (!split_only_) re_ = std::make_unique<Regex>(R"(\w+|[^\w\s]+)");
  }
  void pre_tokenize(PreTokenized& pt) const override {
    split_spans(pt, [&](std::string_view piece, std::vector<Range>& r) {
      if (split_only_) {
        char_ranges(piece, is_whitespace, r);
        apply_behavior(r, SplitBehavior::Removed);
      } else {
        thread_local std::vector<std::pair<uint32_t, uint32_t>> m;
        m.clear();
        re_->find_all(piece, m);
        cover(m, uint32_t(piece.size()), true, r);  // Invert + Removed keeps the matches
        apply_behavior(r, SplitBehavior::Removed);
      }
    });
  }

 private:
  bool split_only_;
  std::unique_ptr<Regex> re_;
};

class SequencePre final : public PreTokenizer {
 public:
  explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> p) : parts(std::move(p)) {}
  void pre_tokenize(PreTokenized& pt) const override {
    for (const auto& p : parts) p->pre_tokenize(pt);
  }
  std::vector<std::unique_ptr<PreTokenizer>> parts;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_byte_level_pre_tokenizer(bool add_prefix_space, bool use_regex) {
  return std::make_unique<ByteLevelPre>(add_prefix_space, use_regex);
}
std::unique_ptr<PreTokenizer> make_split_pre_tokenizer(std::string pattern, bool is_regex, SplitBehavior b,
                                                       bool invert) {
  return std::make_unique<SplitPre>(std::move(pattern), is_regex, b, invert);
}
std::unique_ptr<PreTokenizer> make_metaspace_pre_tokenizer(std::string rep, PrependScheme s, bool split) {
  return std::make_unique<MetaspacePre>(std::move(rep), s, split);
}
std::unique_ptr<PreTokenizer> make_digits_pre_tokenizer(bool individual) {
  return std::make_unique<DigitsPre>(individual);
}
std::unique_ptr<PreTokenizer> make_whitespace_pre_tokenizer(bool split_only) {
  return std::make_unique<WhitespacePre>(split_only);
}
std::unique_ptr<PreTokenizer> make_sequence_pre_tokenizer(std::vector<std::unique_ptr<PreTokenizer>> p) {
  return std::make_unique<SequencePre>(std::move(p));
}

// ---- post-processor ---------------------------------------------------------------------------

namespace {
class TemplatePost final : public PostProcessor {
 public:
  TemplatePost(std::vector<int32_t> pre, std::vector<int32_t> suf) : pre_(std::move(pre)), suf_(std::move(suf)) {}
  void process(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), pre_.begin(), pre_.end());
    ids.insert(ids.end(), suf_.begin(), suf_.end());
  }
  std::vector<int32_t> prefix() const override { return pre_; }
  std::vector<int32_t> suffix() const override { return suf_; }

 private:
  std::vector<int32_t> pre_, suf_;
};
}  // namespace

std::unique_ptr<PostProcessor> make_template_post_processor(std::vector<int32_t> pre, std::vector<int32_t> suf) {
  return std::make_unique<TemplatePost>(std::move(pre), std::move(suf));
}

// ---- decoders ---------------------------------------------------------------------------------

namespace {

class ByteLevelDec final : public Decoder {
 public:
  // Every token's characters map back to bytes (a token with a character outside the alphabet
  // is kept as its UTF-8 bytes); all bytes are joined and read as lossy UTF-8.
  void decode_chain(std::vector<std::string>& tokens) const override {
    const auto& alpha = byte_level_alphabet();
    std::string bytes;
    for (const auto& t : tokens) {
      size_t mark = bytes.size();
      size_t i = 0;
      bool all = true;
      while (i < t.size()) {
        char32_t c = utf8_next(t, i);
        if (c >= alpha.char_to_byte.size() || alpha.char_to_byte[c] < 0) {
          all = false;
          break;
        }
        bytes += char(alpha.char_to_byte[c]);
      }
      if (!all) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, utf8_lossy(bytes));
  }
};

class ReplaceDec final : public Decoder {
 public:
  ReplaceDec(std::string p, std::string c) : pattern_(std::move(p)), content_(std::move(c)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) replace_all(t, pattern_, content_);
  }

 private:
  std::string pattern_, content_;
};

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

class ByteFallbackDec final : public Decoder {
 public:
  // Runs of <0xAB> tokens become their bytes when those form valid UTF-8, else one U+FFFD each.
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string bytes;
    size_t nbytes = 0;
    auto flush = [&] {
      if (nbytes == 0) return;
      if (utf8_valid(bytes)) {
        out.push_back(bytes);
      } else {
        for (size_t k = 0; k < nbytes; ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      bytes.clear();
      nbytes = 0;
    };
    for (auto& t : tokens) {
      if (t.size() == 6 && t.starts_with("<0x") && t[5] == '>' && hex_digit(t[3]) >= 0 && hex_digit(t[4]) >= 0) {
        bytes += char(hex_digit(t[3]) * 16 + hex_digit(t[4]));
        ++nbytes;
        continue;
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    tokens.swap(out);
  }
};

class FuseDec final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDec final : public Decoder {
 public:
  StripDec(std::string content, int start, int stop) : start_(start), stop_(stop) {
    size_t i = 0;
    c_ = utf8_next(content, i);
  }
  // Removes up to `start` leading and `stop` trailing `content` characters of every token.
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      size_t b = 0;
      for (int k = 0; k < start_ && b < t.size(); ++k) {
        size_t i = b;
        if (utf8_next(t, i) != c_) break;
        b = i;
      }
      size_t e = t.size();
      for (int k = 0; k < stop_ && e > b; ++k) {
        size_t s = e - 1;
        while (s > b && (static_cast<unsigned char>(t[s]) & 0xC0) == 0x80) --s;
        size_t i = s;
        if (utf8_next(t, i) != c_) break;
        e = s;
      }
      t = t.substr(b, e - b);
    }
  }

 private:
  char32_t c_;
  int start_, stop_;
};

class MetaspaceDec final : public Decoder {
 public:
  MetaspaceDec(std::string rep, PrependScheme s) : rep_(std::move(rep)), scheme_(s) {}
  // Replacement characters become spaces, except in the first token when a prefix was prepended.
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      std::string_view drop_or_space = (k == 0 && scheme_ != PrependScheme::Never) ? "" : " ";
      replace_all(tokens[k], rep_, drop_or_space);
    }
  }

 private:
  std::string rep_;
  PrependScheme scheme_;
};

class SequenceDec final : public Decoder {
 public:
  explicit SequenceDec(std::vector<std::unique_ptr<Decoder>> p) : parts_(std::move(p)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

std::unique_ptr<Decoder> make_byte_level_decoder() { return std::make_unique<ByteLevelDec>(); }
std::unique_ptr<Decoder> make_replace_decoder(std::string p, std::string c) {
  return std::make_unique<ReplaceDec>(std::move(p), std::move(c));
}
std::unique_ptr<Decoder> make_byte_fallback_decoder() { return std::make_unique<ByteFallbackDec>(); }
std::unique_ptr<Decoder> make_fuse_decoder() { return std::make_unique<FuseDec>(); }
std::unique_ptr<Decoder> make_strip_decoder(std::string content, int start, int stop) {
  return std::make_unique<StripDec>(std::move(content), start, stop);
}
std::unique_ptr<Decoder> make_metaspace_decoder(std::string rep, PrependScheme s) {
  return std::make_unique<MetaspaceDec>(std::move(rep), s);
}
std::unique_ptr<Decoder> make_sequence_decoder(std::vector<std::unique_ptr<Decoder>> p) {
  return std::make_unique<SequenceDec>(std::move(p));
}

// ---- added vocabulary -------------------------------------------------------------------------

void AddedVocabulary::Trie::insert(std::string_view key, int32_t token) {
  if (nodes.empty()) nodes.emplace_back();
  if (key.empty()) return;
  first[static_cast<unsigned char>(key[0])] = true;
  int32_t n = 0;
  for (unsigned char c : key) {
    auto& nx = nodes[n].next;
    auto it = std::lower_bound(nx.begin(), nx.end(), std::make_pair(c, int32_t(-1)),
                               [](const auto& a, const auto& b) { return a.first < b.first; });
    if (it != nx.end() && it->first == c) {
      n = it->second;
    } else {
      int32_t child = int32_t(nodes.size());
      nx.insert(it, {c, child});
      nodes.emplace_back();
      n = child;
    }
  }
  nodes[n].token = token;
}

int32_t AddedVocabulary::Trie::longest(std::string_view s, size_t i, size_t& len) const {
  int32_t best = -1, n = 0;
  for (size_t j = i; j < s.size(); ++j) {
    const auto& nx = nodes[n].next;
    unsigned char c = static_cast<unsigned char>(s[j]);
    auto it = std::lower_bound(nx.begin(), nx.end(), std::make_pair(c, int32_t(-1)),
                               [](const auto& a, const auto& b) { return a.first < b.first; });
    if (it == nx.end() || it->first != c) break;
    n = it->second;
    if (nodes[n].token >= 0) best = nodes[n].token, len = j + 1 - i;
  }
  return best;
}

void AddedVocabulary::add(const AddedToken& t) {
  if (t.content.empty()) return;
  auto it = by_content_.find(t.content);
  if (it != by_content_.end()) {
    by_id_.erase(tokens_[it->second].id);
    tokens_[it->second] = t;
    by_id_[t.id] = it->second;
    return;
  }
  by_content_.emplace(t.content, tokens_.size());
  by_id_[t.id] = tokens_.size();
  tokens_.push_back(t);
}

void AddedVocabulary::build(const Normalizer* normalizer) {
  raw_ = Trie{};
  norm_ = Trie{};
  raw_.nodes.emplace_back();
  norm_.nodes.emplace_back();
  for (size_t k = 0; k < tokens_.size(); ++k) {
    const AddedToken& t = tokens_[k];
    if (!t.normalized) {
      raw_.insert(t.content, int32_t(k));
    } else {
      std::string c = t.content;
      if (normalizer) normalizer->normalize(c);
      norm_.insert(c, int32_t(k));
    }
  }
}

const AddedToken* AddedVocabulary::by_id(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::by_content(std::string_view c) const {
  auto it = by_content_.find(c);
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

namespace {
// Last / first character of a string (U+0000 when empty).
char32_t last_char(std::string_view s) {
  if (s.empty()) return 0;
  size_t b = s.size() - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  return utf8_next(s, b);
}
char32_t first_char(std::string_view s) {
  size_t i = 0;
  return s.empty() ? 0 : utf8_next(s, i);
}
}  // namespace

void AddedVocabulary::split(std::string_view s, bool normalized_set, std::vector<Segment>& out) const {
  out.clear();
  const Trie& trie = normalized_set ? norm_ : raw_;
  if (trie.empty()) {
    if (!s.empty()) out.push_back({0, uint32_t(s.size()), -1});
    return;
  }
  size_t start_offset = 0;  // end of the last emitted token
  size_t i = 0;             // where the matcher resumes (like aho-corasick's leftmost_find_iter)
  while (i < s.size()) {
    if (!trie.first[static_cast<unsigned char>(s[i])]) {
      ++i;
      continue;
    }
    size_t len = 0;
    int32_t k = trie.longest(s, i, len);
    if (k < 0) {
      ++i;
      continue;
    }
    size_t start = i, stop = i + len;
    i = stop;
    const AddedToken& t = tokens_[k];
    if (t.single_word) {
      bool start_ok = start == 0 || !is_word_char(last_char(s.substr(0, start)));
      bool stop_ok = stop == s.size() || !is_word_char(first_char(s.substr(stop)));
      if (!start_ok || !stop_ok) continue;
    }
    if (t.lstrip) {
      size_t b = start;
      while (b > 0) {
        size_t p = b - 1;
        while (p > 0 && (static_cast<unsigned char>(s[p]) & 0xC0) == 0x80) --p;
        size_t q = p;
        if (!is_whitespace(utf8_next(s, q))) break;
        b = p;
      }
      start = std::max(b, start_offset);
    }
    if (t.rstrip) {
      while (stop < s.size()) {
        size_t q = stop;
        if (!is_whitespace(utf8_next(s, q))) break;
        stop = q;
      }
    }
    if (start_offset < start) out.push_back({uint32_t(start_offset), uint32_t(start), -1});
    out.push_back({uint32_t(start), uint32_t(stop), t.id});
    start_offset = stop;  // the matcher itself resumes at the match end, not after stripped spaces
  }
  if (start_offset < s.size()) out.push_back({uint32_t(start_offset), uint32_t(s.size()), -1});
}

// ---- PipelineTokenizer ------------------------------------------------------------------------

void PipelineTokenizer::finish() {
  added.build(normalizer.get());
  // ByteLevel as the last pre-tokenizer step only maps bytes to characters: let the BPE model do
  // it behind its cache.
  auto* bpe = dynamic_cast<BpeModel*>(model.get());
  if (!bpe || !pre_tokenizer) return;
  PreTokenizer* last = pre_tokenizer.get();
  while (auto* seq = dynamic_cast<SequencePre*>(last)) {
    if (seq->parts.empty()) return;
    last = seq->parts.back().get();
  }
  if (auto* bl = dynamic_cast<ByteLevelPre*>(last)) {
    bl->map_bytes = false;
    bpe->set_byte_level_input(true);
  }
}

std::vector<int32_t> PipelineTokenizer::encode(std::string_view text, bool add_special_tokens) const {
  std::string repaired;
  if (!utf8_valid(text)) {  // Python/Rust strings are always valid: match what they would receive
    repaired = utf8_lossy(text);
    text = repaired;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  thread_local std::vector<AddedVocabulary::Segment> segs;
  added.split(text, false, segs);
  for (const auto& sg : segs) {
    if (sg.id >= 0)
      ids.push_back(sg.id);
    else
      encode_segment(text.substr(sg.begin, sg.end - sg.begin), sg.begin == 0, ids);
  }
  if (add_special_tokens && post_processor) post_processor->process(ids);
  return ids;
}

void PipelineTokenizer::encode_segment(std::string_view seg, bool at_start, std::vector<int32_t>& out) const {
  if (!normalizer && !added.has_normalized()) return encode_normalized(seg, at_start, out);
  std::string s(seg);
  if (normalizer) normalizer->normalize(s);
  if (s.empty()) return;
  if (!added.has_normalized()) return encode_normalized(s, at_start, out);
  std::vector<AddedVocabulary::Segment> segs;
  added.split(s, true, segs);
  for (const auto& sg : segs) {
    if (sg.id >= 0)
      out.push_back(sg.id);
    else
      encode_normalized(std::string_view(s).substr(sg.begin, sg.end - sg.begin), at_start && sg.begin == 0, out);
  }
}

void PipelineTokenizer::encode_normalized(std::string_view text, bool at_start, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  thread_local PreTokenized pt;  // buffers reused across calls
  pt.text.assign(text);
  pt.spans.clear();
  pt.spans.push_back({0, uint32_t(text.size()), at_start});
  if (pre_tokenizer) pre_tokenizer->pre_tokenize(pt);
  for (const auto& sp : pt.spans)
    if (sp.end > sp.begin) model->tokenize(std::string_view(pt.text).substr(sp.begin, sp.end - sp.begin), out);
}

std::string PipelineTokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const AddedToken* a = added.by_id(id)) {
      if (skip_special_tokens && a->special) continue;
      tokens.push_back(a->content);
    } else if (const std::string* t = model->id_to_token(id)) {
      if (skip_special_tokens) {
        const AddedToken* same = added.by_content(*t);
        if (same && same->special) continue;
      }
      tokens.push_back(*t);
    }  // unknown ids are skipped, as tokenizers does
  }
  if (!decoder) {
    std::string out;
    for (size_t k = 0; k < tokens.size(); ++k) out += (k ? " " : "") + tokens[k];
    return out;
  }
  decoder->decode_chain(tokens);
  std::string out;
  for (const auto& t : tokens) out += t;
  return out;
}

int32_t PipelineTokenizer::vocab_size() const {
  int32_t n = model->vocab_size();
  for (const auto& t : added.tokens()) n = std::max(n, t.id + 1);
  return n;
}

std::optional<int32_t> PipelineTokenizer::token_to_id(std::string_view token) const {
  if (const AddedToken* a = added.by_content(token)) return a->id;
  return model->token_to_id(token);
}

std::string PipelineTokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* a = added.by_id(id)) return a->content;
  if (const std::string* t = model->id_to_token(id)) return *t;
  return {};
}

}  // namespace qlora::tok

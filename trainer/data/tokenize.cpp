#include "trainer/data/tokenize.h"

namespace qlora::data {

namespace {

// Number of leading tokens of `ids` (the whole text's) that lie within text[:c].
// Clean case: encode(text[:c]) is a prefix of ids, and those tokens are exactly text[:c].
// Otherwise the tokens after the shared prefix differ near c; the decoded length of the prefix's
// own remaining tokens says how much of text[:c] is left, and whole-text tokens are counted while
// their decoded text fits in it.
size_t tokens_within(const tok::Tokenizer& tk, std::string_view text, const std::vector<int32_t>& ids, size_t c,
                     bool* clean) {
  *clean = true;
  if (c == 0) return 0;
  if (c >= text.size()) return ids.size();
  std::vector<int32_t> pre = tk.encode(text.substr(0, c), false);
  size_t shared = 0;
  while (shared < pre.size() && shared < ids.size() && pre[shared] == ids[shared]) ++shared;
  if (shared == pre.size()) return shared;
  *clean = false;
  size_t left = tk.decode(std::vector<int32_t>(pre.begin() + shared, pre.end()), false).size();
  size_t k = shared;
  while (k < ids.size() &&
         tk.decode(std::vector<int32_t>(ids.begin() + shared, ids.begin() + k + 1), false).size() <= left)
    ++k;
  return k;
}

}  // namespace

MarkedTokens encode_marked(const tok::Tokenizer& tk, std::string_view text,
                           const std::vector<std::pair<size_t, size_t>>& spans) {
  MarkedTokens out;
  out.ids = tk.encode(text, false);
  out.marked.assign(out.ids.size(), 0);
  for (auto [b, e] : spans) {
    if (e <= b) continue;
    bool clean;
    size_t first = tokens_within(tk, text, out.ids, b, &clean);
    size_t last = tokens_within(tk, text, out.ids, e, &clean);
    if (!clean) last = std::min(last + 1, out.ids.size());  // the token straddling the end overlaps
    for (size_t t = first; t < last; ++t) out.marked[t] = 1;
  }
  return out;
}

}  // namespace qlora::data

// Prepared datasets cached on disk (the config's dataset_prepared_path): a run whose data,
// tokenizer, chat template and data settings are those of an earlier run loads that run's
// tokenized, masked, shuffled, split and packed rows instead of preparing them again.
//
// An entry is one file, DIR/prepared-<key>.bin, where <key> is the SHA-256 of everything the
// rows depend on (prepared_key below). It is written to a temporary name in DIR and renamed, so
// a reader sees a whole entry or none, and runs (or ranks) writing the same entry at once are
// safe. A file that fails any check on load (magic, version, key, sizes, structure, SHA-256 of
// the payload) is reported with a warning and rebuilt; a DIR that cannot be written is a
// warning, and the run goes on with data prepared in memory.
#pragma once
#include <filesystem>
#include <functional>
#include <string>

#include "trainer/config/data_spec.h"
#include "trainer/data/dataset.h"
#include "trainer/tokenizer/tokenizer.h"

namespace qlora::data {

using LogFn = std::function<void(const std::string&)>;

// Lower-case hex SHA-256 over a format version, every DataSpec field that changes the prepared
// rows (each dataset's type and field names in order, sequence_len, sample_packing,
// train_on_inputs, skip_invalid, val_set_size, seed, chat_template and its kwargs), the content
// of each data file, `tokenizer_digest` (the caller's digest of the tokenizer's files) and the
// chat templates the data could be rendered with (the tokenizer's own, its named ones and the
// built-in one chat_template names). pad_to_sequence_len changes batches, not rows: not part of
// it. Throws UserError when a data file cannot be read.
std::string prepared_key(const config::DataSpec& spec, const tok::Tokenizer& tokenizer,
                         const std::string& tokenizer_digest);

// The entry for `key` in `cache_dir`.
std::filesystem::path prepared_entry(const std::filesystem::path& cache_dir, const std::string& key);

// build_datasets(spec, tokenizer, log), through the cache in `cache_dir` when it is not empty:
// the entry for this data is loaded when present and intact (its log lines are replayed, then
// "data: loaded prepared data from ENTRY"), else the data is built and the entry written ("data:
// prepared data written to ENTRY (SIZE)"). Either way the result is the one build_datasets
// returns, bit for bit (the same PackedData fingerprints). `warn` gets the one-line warnings
// (a corrupt entry, an unwritable DIR, and the data warnings of build_datasets, which an entry
// keeps and a load repeats), without the "qlora: warning: " prefix.
Datasets prepare_datasets(const config::DataSpec& spec, const tok::Tokenizer& tokenizer,
                          const std::string& tokenizer_digest, const std::filesystem::path& cache_dir,
                          const LogFn& log = nullptr, const LogFn& warn = nullptr);

// The stats, as JSON and back, through one list of the fields (prepared.cpp).
std::string stats_to_json(const DataStats& stats);
DataStats stats_from_json(const std::string& json);  // throws std::exception on a malformed text

}  // namespace qlora::data

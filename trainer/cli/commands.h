// Subcommands of the qlora binary: one plain argument struct and one run function each.
// main.cpp is the only TU that includes CLI11 (it is slow to compile); it declares every
// option and fills these structs. A run function returns the exit code; user mistakes throw
// qlora::UserError (exit 2).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qlora::cli {

struct TrainArgs {
  std::string config;                // CONFIG.yaml
  std::vector<std::string> set;      // --set key=value overrides
  bool resume = false;               // --resume given
  std::string resume_path;           // --resume PATH (empty: newest complete checkpoint)
  bool allow_config_change = false;  // --allow-config-change
  // Hidden, for the tests (train::FaultInjection): --test-nonfinite-steps 3,4,
  // --test-stop-after-step N.
  std::vector<int64_t> test_nonfinite_steps;
  int64_t test_stop_after_step = 0;
  uint64_t test_memory_budget = 0;  // --test-memory-budget BYTES: the memory check's budget
  // The launcher (dist/launch.h): any of these given starts workers instead of training here.
  bool launcher = false;
  int nproc_per_node = 1;
  int nnodes = 1;
  int node_rank = 0;
  std::string master_addr;
  int master_port = 0;
  std::vector<std::string> argv;  // the command line after the program name
};
int run_train(const TrainArgs& a);

struct ExportArgs {
  std::string checkpoint;              // checkpoint, run directory or PEFT adapter directory
  std::string format = "peft";         // peft | merged | gguf-adapter | gguf
  std::string out;                     // output directory (gguf: the .gguf file)
  std::string base_model;              // override the base model recorded in the checkpoint
  std::string merge_into = "dequant";  // dequant | original
  std::string dtype;                   // bf16 | fp16 | fp32; empty: fp32 (peft), bf16 (merged), fp16 (gguf)
  std::string outtype;                 // gguf: f16 | bf16 | q8_0 | f32; empty: f16
  std::string max_shard_size = "5GB";
  bool force = false;
};
int run_export(const ExportArgs& a);

struct QuantizeArgs {
  std::string model;  // HF model directory
  std::string out;    // output directory (bnb-4bit checkpoint)
  int blocksize = 64;
  bool double_quant = true;
  std::string compute_dtype = "bfloat16";
  bool force = false;
};
int run_quantize(const QuantizeArgs& a);

struct GenerateArgs {
  std::string model;
  std::string adapter;
  std::string prompt;
  bool chat = false;
  int max_new_tokens = 128;
  double temperature = 0.0;  // 0 = greedy
  int top_k = 0;
  double top_p = 1.0;
  unsigned long long seed = 0;
  std::string device = "auto";
  bool load_in_4bit = false;  // quantize the base to NF4 (the default without an adapter is 16-bit)
  bool ignore_eos = false;    // always generate max_new_tokens (benchmarks)
};
int run_generate(const GenerateArgs& a);

struct EvalArgs {
  std::string model;
  std::string adapter;
  std::string data;
  std::string type = "text";  // dataset type: text | alpaca | chat | prompt_completion
  int sequence_len = 2048;
  int batch_size = 1;
  std::string device = "auto";
  bool load_in_4bit = false;
  bool json = false;
};
int run_eval(const EvalArgs& a);

struct InspectArgs {
  std::string model;
  bool json = false;
};
int run_inspect(const InspectArgs& a);

struct PlanArgs {
  std::string config;
  std::vector<std::string> set;
  std::string device;  // overrides the config's device
  std::string memory;  // the budget to check against (default: what the device has free)
  bool no_time = false;
  bool no_data = false;  // count every row as sequence_len tokens instead of reading the data
  bool json = false;
};
int run_plan(const PlanArgs& a);

struct PreprocessArgs {
  std::string config;            // CONFIG.yaml
  std::vector<std::string> set;  // --set key=value overrides
  int64_t show = 0;              // --show N: print the training order's first N samples
  bool ids = false;              // --ids: with their token ids
  bool json = false;             // --json: the statistics (and shown samples) as one JSON object
};
int run_preprocess(const PreprocessArgs& a);

struct InitArgs {
  std::string model;               // MODEL_DIR
  std::string data;                // --data FILE
  std::string out = "qlora.yaml";  // --out FILE
  bool force = false;              // --force: replace an existing file
};
int run_init(const InitArgs& a);

}  // namespace qlora::cli
